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
    "params_not_updating": "ParamsNotUpdatingCheck",
    "learning_rate": "LearningRateCheck",
    "graph_kept_alive": "GraphKeptAliveCheck",
    "eval_mode": "EvalModeCheck",
    "loss_function": "LossFunctionCheck",
    "numerics": "NumericsCheck",
    "overfit_one_batch": "OverfitOneBatchCheck",
    "risky_calls": "RiskyCallsCheck",
}


def builtin_checks() -> list[type[Check]]:
    """The built-in check classes, in run order. A module that fails to import becomes
    a check that reports the failure as ``crashed``: the other checks still run."""
    classes = []
    for module_name, class_name in BUILTIN_MODULES.items():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
            classes.append(getattr(module, class_name))
        except Exception as exc:  # reported: the stand-in check shows it as crashed
            classes.append(_broken_check(module_name, exc))
    return classes


def _broken_check(module_name: str, error: Exception) -> type[Check]:
    """A stand-in for a check module that cannot be imported."""

    class BrokenCheck(Check):
        id = module_name.replace("_", "-")
        summary = f"(broken: {type(error).__name__}: {error})"

        def run(self, ctx: object) -> list:  # type: ignore[override]
            raise RuntimeError(f"check module {module_name} failed to import: "
                               f"{type(error).__name__}: {error}") from error

    return BrokenCheck


@hookimpl
def torchdoctor_checks() -> list[type[Check]]:
    """The built-in checks."""
    return list(builtin_checks())
