"""The built-in checks, one module per check, registered as one pluggy plugin.

Installed as ``torchdoctor.checks``. To add a check: write ``checks/<name>.py`` with one
:class:`~torchdoctor.check.Check` subclass (no module-level torch import), add the
module name to ``BUILTIN_MODULES``, add a buggy and a fixed program under
``examples/bugs/``, and tests for both.
"""

from __future__ import annotations

import importlib

from torchdoctor.check import Check
from torchdoctor.hookspecs import hookimpl

#: module name -> check class name, in the order checks run and are listed
BUILTIN_MODULES = {
    "shape_mismatch": "ShapeMismatchCheck",
    "device_mismatch": "DeviceMismatchCheck",
    "nan_loss": "NanLossCheck",
    "missing_zero_grad": "MissingZeroGradCheck",
    "eval_mode": "EvalModeCheck",
    "loss_function": "LossFunctionCheck",
    "overfit_one_batch": "OverfitOneBatchCheck",
}


def builtin_checks() -> list[type[Check]]:
    """The built-in check classes, in run order."""
    classes = []
    for module_name, class_name in BUILTIN_MODULES.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        classes.append(getattr(module, class_name))
    return classes


@hookimpl
def torchdoctor_checks() -> list[type[Check]]:
    """The built-in checks."""
    return list(builtin_checks())
