"""Train/eval mode at each forward, and parameters the optimizer does not hold.

Both are pure Python over flags torch already keeps (``module.training``,
``torch.is_grad_enabled()``) and over parameter identities: no tensor op, no sync. The
findings, their ids and words are :mod:`torchdoctor.diagnoses.eval_mode`'s and
:mod:`torchdoctor.diagnoses.parameters`'s, as in ``torchdoctor check``.
"""

from __future__ import annotations

import torch
from torch import nn

from torchdoctor.diagnoses import eval_mode, parameters
from torchdoctor.diagnoses.eval_mode import mode_sensitive
from torchdoctor.findings import Finding

__all__ = ["ModeWatch", "mode_sensitive", "not_in_optimizer"]


class ModeWatch:
    """Remembers the mode of the forwards between two optimizer steps."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sensitive = mode_sensitive(model)
        self.forwards = 0
        self._eval_forward_since_step = False

    def on_forward(self, grad_enabled: bool) -> Finding | None:
        """Called at each forward of the model: a finding when it evaluates (no grad)
        with dropout/batch norm still in training mode. Only a warning: a forward under
        no_grad in training mode may be on purpose (a teacher, a statistic)."""
        self.forwards += 1
        if not self.sensitive:
            return None
        if grad_enabled:
            if not self.model.training:
                self._eval_forward_since_step = True
            return None
        active = self._active_names()
        if self.model.training and active:
            return eval_mode.evaluated_in_train_mode(
                "the model", "a forward under `torch.no_grad()` ran with "
                "`model.training == True`", active, location="model.train()", certain=False)
        return None

    def on_step(self) -> Finding | None:
        """Called before each optimizer step: a finding when a forward since the last
        step ran in eval mode (dropout off, batch norm frozen) with gradients on."""
        eval_forward, self._eval_forward_since_step = self._eval_forward_since_step, False
        if not eval_forward or self._active_names():
            return None
        return eval_mode.trained_in_eval_mode(
            "the model", "the optimizer stepped after a forward with "
            "`model.training == False`", [name for name, _ in self.sensitive],
            location="model.eval()", resumed=False)

    def _active_names(self) -> list[str]:
        return [name for name, module in self.sensitive if module.training]


def not_in_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer,
                     names: dict[int, str]) -> Finding | None:
    """Trainable parameters of ``model`` that no param_group of ``optimizer`` holds (the
    finding of :mod:`torchdoctor.diagnoses.parameters`)."""
    trainable = [(names.get(id(p), "?"), p) for p in model.parameters() if p.requires_grad]
    missing = parameters.not_in_optimizer(trainable, optimizer)
    return parameters.not_in_optimizer_finding(missing, len(trainable), type(model).__name__)
