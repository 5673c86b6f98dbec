"""assert_safe_loss: no unsafe expression and no prediction/target broadcast in a loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchdoctor.testing.errors import fail


def assert_safe_loss(loss_fn: Callable[..., Any], prediction: Any, target: Any) -> None:
    """Call ``loss_fn(prediction, target)`` under the op tracer and fail on anything it
    finds, warnings included: ``log(softmax(x))``, a hand-written BCE, ``x / x.sum()``,
    ``sqrt`` at 0, ``(64, 1) - (64,)`` broadcasts... (see the ``numerics`` and
    ``shape-mismatch`` checks). The failure names each line and its fix."""
    __tracebackhide__ = True
    from torchdoctor.hooks.optrace import problem_findings, trace_loss

    findings = problem_findings(trace_loss(loss_fn, prediction, target))
    if findings:
        fail(f"the loss has {len(findings)} unsafe expression(s) or broadcast(s)", findings)
