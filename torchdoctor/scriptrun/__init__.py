"""The script run: execute the user's file as ``__main__`` under instrumentation.

``script`` runs the file (timeout, captured output, argv), ``instrument`` installs the
hooks and patches for the duration of that run only, ``budget`` is the fast-dev-run
budget, ``observations`` is what was recorded (plain data, no tensors) and ``callsite``
finds the user's file:line in a stack.
"""
