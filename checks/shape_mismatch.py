"""shape-mismatch: a layer fed a shape it cannot take, pinned to the module, and the
silent kind: prediction and target that broadcast against each other in the loss.

Script mode translates the exception that ended the user's script (with the module
that was running) and reads the recorded loss calls and torch's broadcast warning.
Model mode reads the shared forward probe of each model (a copy run on the reference or
the user's batch under a :class:`~torchdoctor.hooks.ShapeTracer`, which names the module
that raised), then computes the loss once on the output. The words and fixes are
:mod:`torchdoctor.diagnoses.shapes`' and :mod:`torchdoctor.diagnoses.broadcasting`'.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from torchdoctor.check import Check
from torchdoctor.diagnoses.broadcasting import (
    broadcast_message,
    is_elementwise_loss,
    silent_broadcast,
    target_size_shapes,
)
from torchdoctor.diagnoses.shapes import SHAPE_CHECK, explain_bare_matmul, explain_shape_error
from torchdoctor.findings import Finding

from .numerics import findings_for

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate, TrainingSetup
    from torchdoctor.scriptrun.observations import ErrorRecord, ModuleCall, ScriptRun

_BATCH_HOOK_HINT = " (if the model takes other inputs, define torchdoctor_batch() in your file)"


class ShapeMismatchCheck(Check):
    """Shape errors translated to the module that raised, and silent loss broadcasts."""

    id = SHAPE_CHECK
    summary = ("layers fed the wrong shape; prediction and target broadcasting in the loss "
               "or in hand-written loss and metric code")

    # -- script mode -------------------------------------------------------------------
    def explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        """A shape error that ended the script, pinned to the module that raised."""
        call = error.module_stack[-1] if error.module_stack else None
        module = call.module if call else None
        explained = explain_bare_matmul(error.message) if module is None else None
        message, hint = explained or explain_shape_error(error.message, module,
                                                         call.inputs if call else ())
        if not message:
            return None
        if module is not None and error.location is not None:
            message += f" (raised at {error.location})"
        location = module.describe() if module is not None else error.location
        return self.error(message, location=location, hint=hint, explains_crash=True)

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """Prediction and target broadcasting against each other in the loss calls, and
        in hand-written loss and metric code (seen by the op tracer)."""
        return self._loss_broadcasts(run) + findings_for(self, run.op_problems)

    def _loss_broadcasts(self, run: ScriptRun) -> list[Finding]:
        found: list[Finding] = []
        seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        for record in run.losses:
            if record.target is None or not is_elementwise_loss(record.loss):
                continue
            pair = (tuple(record.prediction.shape), tuple(record.target.shape))
            if pair in seen or not silent_broadcast(*pair):
                continue
            seen.add(pair)
            message, hint = broadcast_message(record.loss, *pair)
            found.append(self.error(message, location=record.location, hint=hint))
        for warning in run.warnings:
            shapes = target_size_shapes(warning.message)
            if shapes is not None and shapes not in seen:
                seen.add(shapes)
                message, hint = broadcast_message("the loss", *shapes)
                found.append(self.error(message, location=warning.location, hint=hint))
        return found

    # -- model mode --------------------------------------------------------------------
    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """The traced forward of a copy on the setup's batch (the shared probe), then the
        loss on its output."""
        import torch

        setup = ctx.training_setup(candidate)
        if not _model_mode_applies(ctx, setup, "batch"):
            return []
        # what script mode already said, so a model copy does not say it twice
        earlier = ctx.crash_explanations + (self._loss_broadcasts(ctx.run) if ctx.run else [])
        probe = ctx.forward_probe(candidate)
        if probe.error is not None:
            return self._forward_failure(ctx, candidate, probe.error, probe.failed_at, earlier)
        if not _model_mode_applies(ctx, setup, "loss"):
            return []
        with torch.no_grad():
            return self._loss_fit(candidate, setup, probe.output,
                                  probe.targets, earlier)

    def _forward_failure(self, ctx: CheckContext, candidate: ModelCandidate,
                         exc: BaseException, call: ModuleCall | None,
                         earlier: list[Finding]) -> list[Finding]:
        module = call.module if call else None
        message, hint = explain_shape_error(exc, module, call.inputs if call else ())
        where = module.describe() if module else candidate.name
        if not message or any(where in f.location for f in earlier):
            return []
        raised_at = _user_line(exc)
        if raised_at:
            message += f" (raised at {raised_at})"
        setup = ctx.training_setup(candidate)
        if not setup.user_gave("batch"):
            reference = setup.source.get("batch", "reference") == "reference"
            message += (" with the reference FashionMNIST batch" if reference
                        else f" with the batch model mode inferred: {setup.data}")
            hint += _BATCH_HOOK_HINT
        return [self.error(message, location=f"{candidate.name}: {where}", hint=hint)]

    def _loss_fit(self, candidate: ModelCandidate, setup: TrainingSetup, output: Any,
                  targets: Any, earlier: list[Finding]) -> list[Finding]:
        import torch

        if not isinstance(output, torch.Tensor) or not isinstance(targets, torch.Tensor):
            return []
        loss_fn = setup.make_loss()
        name = _callable_name(loss_fn)
        pair = (tuple(output.shape), tuple(targets.shape))
        location = f"{candidate.name}: output {pair[0]} -> {name}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                loss_fn(output, targets)
            except Exception as exc:  # the user's loss raised: explaining it is the check
                message, hint = _loss_failure(exc, output, targets)
                return [self.error(message, location=location, hint=hint)] if message else []
        warned = any(target_size_shapes(str(w.message)) for w in caught)
        if not (warned or (is_elementwise_loss(name) and silent_broadcast(*pair))):
            return []
        message, hint = broadcast_message(name, *pair)
        shapes = f"prediction {pair[0]} with target {pair[1]}"
        if any(shapes in f.message for f in earlier):
            return []
        return [self.error(message, location=location, hint=hint)]


def _model_mode_applies(ctx: CheckContext, setup: TrainingSetup, what: str) -> bool:
    """Model mode uses the reference batch and loss unless the user gives their own. When
    the script ran the model (``batch``) or the loss (``loss``) on its own data, that is
    the better evidence, and a reference batch the model was never meant for proves
    nothing."""
    if setup.user_gave("batch") or setup.user_gave(what):
        return True
    if ctx.run is None:
        return True
    return not (ctx.run.forwards if what == "batch" else ctx.run.losses)


def _loss_failure(exc: BaseException, output: Any, targets: Any) -> tuple[str, str]:
    """A loss call that raised: a shape error, or more classes in the targets than the
    model outputs (torch's "Target 9 is out of bounds")."""
    if "out of bounds" in str(exc) and output.dim() >= 2 and not targets.is_floating_point():
        classes, top = int(output.shape[1]), int(targets.max())
        return (f"the model outputs {classes} class scores per sample {tuple(output.shape)} "
                f"but the targets go up to class {top}",
                f"make the last layer output {top + 1} classes (out_features={top + 1})")
    return explain_shape_error(exc, None, ())


def _callable_name(loss_fn: Any) -> str:
    """``MSELoss`` for a loss module, ``mse_loss`` for a function, else "the loss"."""
    if hasattr(type(loss_fn), "forward"):
        return type(loss_fn).__name__
    name = getattr(loss_fn, "__name__", "")
    return name if name and name != "<lambda>" else "the loss"


def _user_line(exc: BaseException) -> str:
    """The innermost line of the user's code in the traceback, or ""."""
    from torchdoctor.scriptrun.callsite import user_location_of_traceback

    found = user_location_of_traceback(exc.__traceback__)
    return str(found) if found else ""
