"""``assert_eval_deterministic``: two eval-mode passes must agree, and when they do not,
which module's forward() draws random numbers.

The recorder, the comparison and the words are those of the eval-mode check's model
mode (:mod:`torchdoctor.diagnoses.eval_randomness`): the finding has the id
``eval-mode``."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from torchdoctor.diagnoses.eval_randomness import Tolerance, eval_randomness
from torchdoctor.engine.state import preserved_state
from torchdoctor.testing.errors import fail


def assert_eval_deterministic(model: nn.Module, example: Any, *, atol: float = 0.0,
                              rtol: float = 0.0) -> None:
    """Fail unless two eval-mode forward passes of a copy of ``model`` on ``example``
    give the same output (within ``atol``/``rtol``; exact by default).

    On failure, names the first module whose output differs, or the module whose own
    forward() code draws random numbers between submodule calls (the usual culprit:
    ``F.dropout(x)`` without ``training=self.training``, pointed at by line).
    """
    __tracebackhide__ = True
    trial = copy.deepcopy(model)
    with preserved_state():
        found = eval_randomness(trial, example, tolerance=Tolerance(atol, rtol))
    if found is None:
        return
    difference = found.largest_difference
    fail("two eval-mode forward passes on the same input gave different outputs",
         [found.finding], "" if difference is None else
         f"largest difference in the model output: {difference:.4g}")
