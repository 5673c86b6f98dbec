"""localize_nonfinite: replay one training step on a copy of the model with a
NonFiniteTracer on, and say what went non-finite first (inputs, an activation, the loss
or a gradient)."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses.nonfinite import (
    all_finite,
    backward_op_finding,
    first_nonfinite,
    gradient_finding,
    inputs_finding,
    loss_made_it_finding,
)
from torchdoctor.errors import UserCodeError, user_code
from torchdoctor.findings import Finding
from torchdoctor.hooks.nonfinite import NonFiniteHit, NonFiniteTracer
from torchdoctor.hooks.replica import clone_tensors, copy_without_hooks, cuda_indices
from torchdoctor.scriptrun.observations import TensorSummary
from torchdoctor.tensors import iter_tensors, summarize


@dataclass(frozen=True)
class NonFiniteReport:
    """What one replayed training step (on a copy of the model) showed.

    ``loss_is_first`` is True when the model's output was finite but the loss was not:
    the loss function itself made the NaN (``log(0)``, a division by zero...).
    ``backward_op`` names the autograd function that first returned NaN (only with
    ``anomaly=True``); ``error`` holds any other exception the replay raised.
    """

    first_output: NonFiniteHit | None
    first_gradient: NonFiniteHit | None
    inputs_finite: bool
    output: TensorSummary | None = None
    loss: float | None = None
    loss_finite: bool | None = None
    backward_op: str = ""
    anomaly: str = ""
    error: str = ""
    findings: list[Finding] = field(default_factory=list)

    @property
    def output_finite(self) -> bool:
        """Whether the model's output was free of NaN/inf."""
        return self.output is not None and self.output.finite

    @property
    def loss_is_first(self) -> bool:
        """Finite model output but a non-finite loss: the loss function is at fault."""
        return self.output_finite and self.loss_finite is False

    @property
    def found(self) -> bool:
        """Whether anything went non-finite in the replay."""
        return bool(self.first_output or self.first_gradient or self.loss_finite is False
                    or not self.inputs_finite or self.backward_op)

    @property
    def kind(self) -> str:
        """``input``, ``activation``, ``loss``, ``gradient`` or ``none``: what went
        non-finite first."""
        if not self.inputs_finite:
            return "input"
        if self.first_output is not None:
            return "activation"
        if self.loss_is_first:
            return "loss"
        if self.first_gradient is not None or self.backward_op:
            return "gradient"
        return "none"


_ANOMALY_OP = re.compile(r"Function '(\w+)' returned nan values")


def localize_nonfinite(model: nn.Module, inputs: Any, loss_fn: Callable[..., Any] | None = None,
                       targets: Any = None, *, anomaly: bool = False) -> NonFiniteReport:
    """Replay one forward (and backward, when ``loss_fn`` is given) on a deep copy of
    ``model`` with a :class:`NonFiniteTracer` on, and say what first went non-finite.

    ``inputs`` is passed as ``model(inputs)`` (a tuple is unpacked). Inputs and targets
    are cloned, the RNG is forked (dropout draws the same masks, the user's RNG stream
    is untouched) and the user's model, inputs and grad mode are left as they were.
    With ``anomaly=True`` the replay runs under ``torch.autograd.detect_anomaly`` to
    name the backward op that returned NaN (the previous anomaly mode is restored).
    """
    replica = copy_without_hooks(model)
    inputs, targets = clone_tensors(inputs), clone_tensors(targets)
    state: dict[str, Any] = {"inputs_finite": all_finite(inputs)}
    with torch.random.fork_rng(devices=cuda_indices(replica)), torch.enable_grad():
        with NonFiniteTracer(replica) as tracer, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anomaly mode warns on every use
            _replay(replica, inputs, loss_fn, targets, anomaly, state)
    report = NonFiniteReport(tracer.first_output, tracer.first_gradient, **state)
    return dataclasses.replace(report, findings=_report_findings(report, tracer))


def _replay(model: nn.Module, inputs: Any, loss_fn: Callable[..., Any] | None, targets: Any,
            anomaly: bool, state: dict[str, Any]) -> None:
    """Run the step, filling ``state`` with what the report needs. What the user's model,
    loss or backward raises is reported (it is the diagnosis); torchdoctor's own
    summaries are outside the guarded calls, so a bug of ours propagates."""
    try:
        with torch.autograd.set_detect_anomaly(anomaly, check_nan=True):
            with user_code():
                output = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
            first = first_nonfinite(output)
            summary_of = first if first is not None else next(iter_tensors(output), None)
            state["output"] = summarize(summary_of) if summary_of is not None else None
            if loss_fn is None:
                return
            with user_code():
                loss = loss_fn(output, targets)
            if not isinstance(loss, torch.Tensor):
                state["error"] = f"the loss function returned {type(loss).__name__}, not a tensor"
                return
            state["loss"] = float(loss.detach().float().mean())
            state["loss_finite"] = bool(torch.isfinite(loss.detach()).all())
            if loss.requires_grad:  # reduction="none": backward through the mean
                with user_code():
                    (loss if loss.numel() == 1 else loss.mean()).backward()
    except UserCodeError as raised:
        exc = raised.error
        match = _ANOMALY_OP.search(str(exc))
        if anomaly and match:
            state["backward_op"], state["anomaly"] = match.group(1), str(exc)
        else:
            state["error"] = f"{type(exc).__name__}: {exc}"


def _report_findings(report: NonFiniteReport, tracer: NonFiniteTracer) -> list[Finding]:
    """The finding for what went non-finite first (what follows from it is not repeated)."""
    kind = report.kind
    if kind == "input":
        return [inputs_finding()]
    if kind == "activation":
        return tracer.findings()
    if kind == "loss":
        return [loss_made_it_finding(report.loss)]
    found = [] if report.first_gradient is None else [gradient_finding(report.first_gradient)]
    if report.backward_op:
        found.append(backward_op_finding(report.backward_op))
    return found
