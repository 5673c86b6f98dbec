"""Non-finite values in a script run: which parameters or gradients hold NaN/inf, and
the first such value localised to the module that produced it (by replaying the last
forward on a copy, see :mod:`torchdoctor.diagnoses.nonfinite_replay`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchdoctor.diagnoses.nonfinite import all_finite
from torchdoctor.diagnoses.nonfinite_replay import replay_forward
from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.forwards import ForwardRecorder
from torchdoctor.scriptrun.observations import NonFiniteRecord, ScriptRun
from torchdoctor.scriptrun.progress import RunProgress
from torchdoctor.tensors import stored_values


class NonFiniteWatch:
    """Finds non-finite tensors among the observed models' parameters and records the
    first one of each kind."""

    def __init__(self, run: ScriptRun, progress: RunProgress,
                 forwards: ForwardRecorder) -> None:
        self.run = run
        self.progress = progress
        self.forwards = forwards

    def nonfinite(self, read: Callable[[nn.Parameter], torch.Tensor | None]) -> list[str]:
        """Names of the parameters of the observed models whose ``read(p)`` (the
        parameter or its gradient) holds NaN/inf."""
        models = self.forwards.models
        values = [read(p) for model in models for p in model.parameters()]
        if all_finite([v for v in values if v is not None]):
            return []
        names = []
        for model in models:
            for param in model.parameters():
                tensor = read(param)
                if tensor is not None and not bool(torch.isfinite(stored_values(tensor)).all()):
                    names.append(self.forwards.param_name(param))
        return names

    def nonfinite_params(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """Names of ``optimizer``'s parameters that hold NaN/inf."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if all_finite(params):
            return []
        return [self.forwards.param_name(p) for p in params
                if not bool(torch.isfinite(p.detach()).all())]

    def localize(self, kind: str, where: str, lr: float | None = None) -> None:
        """Record the first non-finite value; replay the last forward with per-module
        hooks (on a copy) to find the module that produced it."""
        record = NonFiniteRecord(
            step_count=self.progress.applied_steps, kind=kind, where=where,
            location=user_callsite(), lr=lr,
            loss_history=[b.value for b in self.run.backwards[-12:] if b.value is not None])
        self.run.nonfinite.append(record)
        if kind in ("loss", "gradient") and self.run.forwards:
            self._replay(record, self.run.forwards[-1].model)

    def _replay(self, record: NonFiniteRecord, model_index: int) -> None:
        inputs = self.forwards.last_inputs(model_index)
        if inputs is None:
            return
        self.progress.paused = True
        try:
            hit = replay_forward(self.forwards.models[model_index], inputs)
        finally:
            self.progress.paused = False
        if hit is not None:
            record.kind = "activation" if record.kind == "loss" else record.kind
            record.where = record.where or hit.qualname
            record.module = hit.module
            record.detail = "inputs were finite" if hit.inputs_finite else \
                "its inputs were already non-finite"
