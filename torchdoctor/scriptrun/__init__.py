"""The script run: execute the user's file as ``__main__`` under instrumentation.

``script`` runs the file (timeout, captured output, argv); ``instrument`` assembles the
instrumentation for the duration of that run only: ``patches`` installs and removes the
global patches and hooks (all or nothing), ``wrappers`` are the replacements (inert once
the run ends), ``forwards``, ``losses``, ``training`` and ``nonfinite`` record what they
see, ``progress`` is where the run is (pass, steps); ``budget`` is the fast-dev-run
budget, ``observations`` is what was recorded (plain data, no tensors) and ``callsite``
finds the user's file:line in a stack.
"""
