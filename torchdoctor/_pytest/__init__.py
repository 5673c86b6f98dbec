"""The parts of torchdoctor's pytest plugin; :mod:`torchdoctor.pytest_plugin` is the
module pytest loads (entry point ``pytest11``) and holds the hook functions.

One job each: ``options`` (command-line options and ini settings), ``settings``
(reading them, check ids), ``markers`` (the ``torchdoctor`` marker and which tests use
torchdoctor), ``items`` (a ``--torchdoctor`` target's collector and check items),
``fixtures`` (``doctor``, ``reference_batch``), ``watch`` (the ``watch`` fixture),
``assertrepr`` (explanations of failed comparisons). None of them imports torch at
import time: pytest loads the plugin in every run, torch or not.
"""
