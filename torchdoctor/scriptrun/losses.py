"""The loss recorder of a script run: every loss computed outside a model (a loss
module, or a functional loss called directly), as summaries of prediction and target."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.observations import LossRecord, ScriptRun
from torchdoctor.scriptrun.progress import RunProgress, bookkeeping
from torchdoctor.tensors import shape_only, summarize

#: functional losses observed when called outside a loss module
FUNCTIONAL_LOSSES = (
    "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div",
)


class LossRecorder:
    """Appends a :class:`LossRecord` to the run per loss call."""

    def __init__(self, run: ScriptRun, progress: RunProgress) -> None:
        self.run = run
        self.progress = progress

    @bookkeeping
    def record(self, name: str, args: tuple[Any, ...], output: Any,
               options: dict[str, Any], module: Any = None) -> None:
        """Record loss ``name`` called with ``args`` (prediction, target) -> ``output``
        (``module``: the loss module, when it is one; only its name is recorded here)."""
        prediction = args[0]
        target = args[1] if len(args) > 1 else None
        if not isinstance(prediction, torch.Tensor):
            return
        value = None
        if isinstance(output, torch.Tensor) and output.numel() == 1:
            value = float(output.detach())
        describe = summarize if self.progress.detailed(self.run.losses) else shape_only
        self.run.losses.append(LossRecord(
            index=len(self.run.losses), loss=name, prediction=describe(prediction),
            target=describe(target) if isinstance(target, torch.Tensor) else None,
            value=value, step_count=self.progress.applied_steps, location=user_callsite(),
            options={k: str(v) for k, v in options.items()},
            loader_pass=self.progress.pass_index))
