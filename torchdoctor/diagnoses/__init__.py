"""One home per bug class: detection, thresholds, finding id, words and fix.

Every front end (the checks, ``watch()``, the assertion helpers in
:mod:`torchdoctor.testing` and the validators) calls these modules, so the same bug has
the same id and the same message everywhere.
"""
