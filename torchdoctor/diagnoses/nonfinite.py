"""NaN/inf in the loss, the gradients, the weights or the activations: the finiteness
test, the words of every non-finite finding, and why it happened.

The one home of this bug class. The ``nan-loss`` check, ``watch()``,
:func:`torchdoctor.testing.assert_finite`, the script instrument and
:func:`torchdoctor.hooks.localize_nonfinite` all test finiteness with :func:`all_finite`
and word their findings here; the replays are :mod:`torchdoctor.diagnoses.nonfinite_replay`'s.

Why: both modes of the ``nan-loss`` check reduce what they saw to one
:class:`Evidence`; :func:`classify` walks :data:`CAUSES` in order and returns the first
cause whose rule holds. The order encodes how certain each rule is:

=================  ===================================================  ==================
cause              rule (on the evidence)                               fix
=================  ===================================================  ==================
``data``           the input batch already held NaN/inf                 clean the dataset
``overflow``       the values are float16 (max 65504)                   autocast+GradScaler
``divergence``     after >= 1 step: the loss rose over the last steps,  lower lr, clip
                   the lr is large for the optimizer, or an optimizer   gradients
                   step turned finite gradients into non-finite weights
``log-or-div``     the very first forward, or a finite model output     log_softmax,
                   with a non-finite loss, or anomaly mode blamed       BCEWithLogitsLoss,
                   log/div/sqrt/pow                                     epsilon, clamp
``unknown``        none of the above                                    all of the above
=================  ===================================================  ==================

No torch import at module level: the evidence is plain data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchdoctor.findings import Finding, Severity
from torchdoctor.scriptrun.observations import ModuleInfo, TensorSummary

if TYPE_CHECKING:
    import torch

#: the finding id of non-finite values, whichever front end finds them
NONFINITE_CHECK_ID = "nan-loss"


@dataclass(frozen=True)
class NonFiniteHit:
    """Where a NaN/inf first appeared.

    For a forward output: ``qualname`` is the module's, ``inputs_finite`` says whether
    the module's inputs were finite (True: this module made the NaN; False: it received
    it). For a gradient: ``qualname`` is the parameter's (``fc1.weight``), ``module``
    its owner, and ``inputs_finite`` whether the parameter's own value was finite.
    ``summary`` describes the non-finite tensor.
    """

    qualname: str
    module: ModuleInfo
    inputs_finite: bool
    summary: TensorSummary

    def describe(self) -> str:
        """``fc2 (Linear, ...) produced NaN/inf from finite inputs``-style text."""
        return self.module.describe()


# -- the finiteness test -------------------------------------------------------------------

def _floats(value: Any) -> list[torch.Tensor]:
    """The floating tensors of ``value`` that hold values (sparse ones as their stored
    values: the tests below have no sparse kernels)."""
    from torchdoctor.tensors import iter_tensors, stored_values

    return [stored_values(t) for t in iter_tensors(value) if t.is_floating_point()
            and t.numel() and t.device.type != "meta"]


def all_finite(value: Any) -> bool:
    """Whether every floating tensor in ``value`` (a tensor, or nested lists, tuples and
    dicts of them) is free of NaN/inf. Meta and empty tensors have no values to test.

    One fused norm per call instead of an isfinite per tensor (it runs on every step);
    a norm can overflow to inf for huge finite values, so a non-finite norm is
    confirmed value by value.
    """
    import torch

    floats = [t.detach() for t in _floats(value)]
    if not floats:
        return True
    with torch.no_grad():
        norms = torch._foreach_norm(floats)
        if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
            return True
        return all(bool(torch.isfinite(t).all()) for t in floats)


def first_nonfinite(value: Any) -> torch.Tensor | None:
    """The first floating tensor in a nested value holding NaN/inf, or None."""
    import torch

    from torchdoctor.tensors import iter_tensors

    for tensor in iter_tensors(value):
        stored = _floats(tensor)
        if stored and not bool(torch.isfinite(stored[0].detach()).all()):
            return tensor
    return None


# -- the words of the localised findings (replays, hooks) --------------------------------------

#: the fix when the loss function itself made the NaN/inf from a finite output
LOSS_MADE_IT_HINT = ("use a numerically stable loss (CrossEntropyLoss/BCEWithLogitsLoss on "
                     "logits instead of log(softmax) or log(sigmoid)), clamp before log: "
                     "x.clamp_min(1e-8), and check the targets")


def _finding(message: str, location: str, hint: str) -> Finding:
    return Finding(NONFINITE_CHECK_ID, Severity.ERROR, message, location, hint)


def inputs_finding() -> Finding:
    """The model's inputs already held NaN/inf."""
    return _finding("the inputs hold NaN/inf", "inputs",
                    "check the data: torchdoctor.validators.check_batch(batch)")


def loss_made_it_finding(loss: float | None = None, prefix: str = "") -> Finding:
    """A finite model output went into the loss, and the loss was NaN/inf."""
    value = f" ({loss})" if loss is not None else ""
    return _finding(f"{prefix}the model's output was finite but the loss was not{value}: "
                    "the loss computation made the NaN/inf", "loss", LOSS_MADE_IT_HINT)


def output_finding(hit: NonFiniteHit, model_inputs_finite: bool | None) -> Finding:
    """The finding for a module output holding NaN/inf: made there, received from the
    data, or made by tensor code between modules."""
    where = hit.module.describe()
    if hit.inputs_finite:
        message = (f"{where} produced NaN/inf (output {hit.summary.describe()}) from finite "
                   "inputs")
        hint = ("look at this module's computation: a division by zero, log/sqrt of "
                "values <= 0, exp overflow, or weights that already hold NaN/inf")
    elif model_inputs_finite is False:
        message = f"the model's inputs already hold NaN/inf (first seen in {where})"
        hint = "check the data: torchdoctor.validators.check_batch(batch)"
    else:
        parent = hit.qualname.rpartition(".")[0] or "<model>"
        message = (f"{where} received NaN/inf: it arose in code between modules, "
                   f"in the forward of {parent}")
        hint = f"look at the tensor operations in {parent}.forward before {hit.qualname}"
    return _finding(message, where, hint)


def gradient_finding(hit: NonFiniteHit) -> Finding:
    """The finding for a parameter gradient holding NaN/inf."""
    if not hit.inputs_finite:
        message = f"parameter {hit.qualname} itself holds NaN/inf, and so does its gradient"
        hint = "an earlier optimizer step broke it: lower the learning rate, clip gradients"
    else:
        message = f"the gradient of {hit.qualname} holds NaN/inf ({hit.summary.describe()})"
        hint = ("find the backward op with localize_nonfinite(..., anomaly=True); clip "
                "gradients (torch.nn.utils.clip_grad_norm_) or lower the learning rate")
    return _finding(message, hit.qualname, hint)


def backward_op_finding(op: str) -> Finding:
    """Anomaly mode named the backward op that returned NaN."""
    return _finding(f"backward op {op} returned NaN", "backward",
                    "the op's derivative is infinite at these values (sqrt/log at 0, "
                    "division by zero, the torch.where trap): add an epsilon or clamp the "
                    "input")


# -- why: the cause table ------------------------------------------------------------------

#: Learning rates at or above which a step counts as "large", by optimizer type.
#: Adaptive optimizers normalise the gradient, so their lr is the step size itself.
LARGE_LR = {"Adam": 0.1, "AdamW": 0.1, "Adamax": 0.1, "NAdam": 0.1, "RAdam": 0.1,
            "RMSprop": 0.1, "Adagrad": 1.0}
DEFAULT_LARGE_LR = 1.0
#: the largest finite float16 value
HALF_MAX = 65504.0
#: backward functions of ops that are non-finite at 0 (log(0), x/0, sqrt'(0), 0**-1)
_SINGULAR_BACKWARD = re.compile(r"\b(Log|Log2|Log10|Div|Sqrt|Rsqrt|Reciprocal|Pow)Backward")


@dataclass(frozen=True)
class Evidence:
    """What is known about the first non-finite value of a run.

    ``steps_before``: optimizer steps applied before it; ``kind``: ``loss``,
    ``gradient``, ``parameter``, ``activation`` or ``input``; ``where``: the first
    module or parameter that held it; ``loss_history``: the finite losses before it,
    oldest first; ``output_finite``: whether the model's output was finite (None when
    unknown); ``detail``: e.g. anomaly mode's "Function 'LogBackward0' returned nan".
    """

    steps_before: int
    kind: str
    where: str = ""
    loss_history: tuple[float, ...] = ()
    lr: float | None = None
    optimizer_type: str = ""
    inputs_finite: bool = True
    output_finite: bool | None = None
    dtype: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Cause:
    """One row of the table: a name, a title, the rule, why it matched, the fix."""

    name: str
    title: str
    applies: Callable[[Evidence], bool]
    because: Callable[[Evidence], str]
    hint: str


def loss_rose(history: tuple[float, ...]) -> bool:
    """Whether the loss was rising before it went non-finite: one of the last three
    losses is over twice the smallest loss seen."""
    finite = [v for v in history if math.isfinite(v)]
    return len(finite) >= 2 and max(finite[-3:]) > 2 * min(finite)


def large_lr(lr: float | None, optimizer_type: str) -> bool:
    """Whether ``lr`` is large for this optimizer type (see :data:`LARGE_LR`)."""
    return lr is not None and lr >= LARGE_LR.get(optimizer_type, DEFAULT_LARGE_LR)


def _number(value: float) -> str:
    return f"{value:.3g}"


def _lr_text(ev: Evidence) -> str:
    if ev.lr is None:
        return ""
    name = ev.optimizer_type or "the optimizer"
    large = f", large for {name}" if large_lr(ev.lr, ev.optimizer_type) else ""
    return f"lr={ev.lr:g}{large}"


def diverges(ev: Evidence) -> bool:
    """Whether the evidence points at divergence (the learning rate) as the cause."""
    if ev.steps_before < 1:
        return False
    return (ev.kind == "parameter" or loss_rose(ev.loss_history)
            or large_lr(ev.lr, ev.optimizer_type))


def _diverges_because(ev: Evidence) -> str:
    reasons = []
    if loss_rose(ev.loss_history):
        finite = [v for v in ev.loss_history if math.isfinite(v)]
        reasons.append(f"the loss rose from {_number(finite[0])} to "
                       f"{_number(max(finite[-3:]))} over the steps before")
    if ev.kind == "parameter":
        reasons.append("the optimizer step itself turned finite gradients into "
                       "non-finite weights")
    if ev.lr is not None:
        plural = "s" if ev.steps_before != 1 else ""
        reasons.append(f"after {ev.steps_before} step{plural} at {_lr_text(ev)}")
    return "; ".join(reasons)


def _singular(ev: Evidence) -> bool:
    first_forward = ev.steps_before == 0 and ev.kind in ("loss", "activation", "gradient")
    loss_only = ev.kind == "loss" and ev.output_finite is True
    return first_forward or loss_only or bool(_SINGULAR_BACKWARD.search(ev.detail))


def _singular_because(ev: Evidence) -> str:
    reasons = []
    if ev.kind == "loss" and ev.output_finite is True:
        reasons.append("the model output was finite but the loss computed from it was not")
    elif ev.steps_before == 0:
        reasons.append("it appeared at the very first step, before any optimizer step, "
                       "from finite inputs")
    if _SINGULAR_BACKWARD.search(ev.detail):
        reasons.append(f"anomaly mode: {ev.detail.rstrip('.')}")
    return "; ".join(reasons)


def _half(ev: Evidence) -> bool:
    return "float16" in ev.dtype or ev.dtype.endswith(".half")


CAUSES: tuple[Cause, ...] = (
    Cause("data", "bad input data",
          lambda ev: not ev.inputs_finite,
          lambda ev: "the input batch already held NaN/inf before the model ran",
          "Find the bad samples in the dataset or transforms (e.g. "
          "`torchdoctor.validators.check_batch(batch)` raises on a non-finite batch) "
          "and drop or fix them; normalise with a non-zero std."),
    Cause("overflow", "float16 overflow",
          _half,
          lambda ev: f"the values are {ev.dtype.replace('torch.', '')}, whose largest "
                     f"finite value is {HALF_MAX:.0f}",
          "Train in mixed precision instead of pure float16: keep float32 weights, run "
          "the forward under `torch.autocast(device_type, dtype=torch.float16)` with "
          "`torch.amp.GradScaler()`, or use bfloat16."),
    Cause("divergence", "learning rate too high (divergence)",
          diverges, _diverges_because,
          "Lower the learning rate (e.g. 10x) and clip gradients between backward() and "
          "step(): `torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`."),
    Cause("log-or-div", "log of zero / division by zero",
          _singular, _singular_because,
          "Use numerically stable forms: `F.log_softmax(x, dim=1)` (or "
          "nn.CrossEntropyLoss on raw logits) instead of `torch.log(softmax(x))`, "
          "nn.BCEWithLogitsLoss instead of sigmoid + BCELoss; add an epsilon to "
          "denominators (`x / (d + 1e-8)`) and clamp before log/sqrt "
          "(`torch.log(p.clamp_min(1e-8))`)."),
)

UNKNOWN = Cause(
    "unknown", "unclear cause", lambda ev: True,
    lambda ev: "no rule matched the evidence",
    "Check the inputs (`torchdoctor.validators.check_batch`), replace log(softmax)/"
    "sigmoid+BCE by log_softmax/BCEWithLogitsLoss, add epsilons to divisions, lower the "
    "learning rate and clip gradients (`torch.nn.utils.clip_grad_norm_`).",
)


def describe_module(info: ModuleInfo, *, made_here: bool) -> str:
    """The module where the first non-finite output appeared. For the root model with
    finite inputs, point at its own forward code: its submodules' outputs were finite,
    so an operation written in forward() (torch.log, a division...) made the NaN/inf."""
    if info.qualname or not made_here:
        return info.describe()
    return f"{info.type_name}.forward itself (an operation in forward(), not a submodule)"


def classify(ev: Evidence) -> tuple[Cause, str]:
    """The likely cause of ``ev`` and the reason (a phrase quoting the evidence)."""
    cause = next((c for c in CAUSES if c.applies(ev)), UNKNOWN)
    return cause, cause.because(ev)


# -- the nan-loss finding: what, when, where, why and the fix --------------------------------

#: how each kind of first non-finite value is announced
WHAT = {
    "loss": "the loss became NaN/inf",
    "activation": "a forward pass produced NaN/inf (and so did the loss)",
    "gradient": "gradients became NaN/inf",
    "parameter": "the weights became NaN/inf",
    "input": "the input batch holds NaN/inf",
}
#: how the place of the first non-finite value is introduced, by kind
_WHERE = {
    "loss": "produced by",
    "activation": "first module with a non-finite output:",
    "gradient": "first non-finite gradient:",
    "parameter": "first non-finite parameter:",
    "input": "in",
}


def when(steps: int) -> str:
    """``after 3 optimizer steps`` / ``at the very first step (...)``."""
    if steps == 0:
        return "at the very first step (before any optimizer step)"
    return f"after {steps} optimizer step{'s' if steps != 1 else ''}"


def explain(ev: Evidence, prefix: str = "") -> tuple[str, str]:
    """``(message, fix)`` of the finding about ``ev``: what went non-finite, when,
    where, the likely cause and why."""
    cause, because = classify(ev)
    what = WHAT.get(ev.kind, "a NaN/inf appeared")
    where = f"; {_WHERE.get(ev.kind, 'in')} {ev.where}" if ev.where else ""
    return (f"{prefix}{what} {when(ev.steps_before)}{where}. "
            f"Likely cause: {cause.title}: {because}.", cause.hint)
