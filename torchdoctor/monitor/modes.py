"""Train/eval mode at each forward, and parameters the optimizer does not hold.

Both are pure Python over flags torch already keeps (``module.training``,
``torch.is_grad_enabled()``) and over parameter identities: no tensor op, no sync.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from torchdoctor.diagnoses import parameters
from torchdoctor.findings import Finding, Severity

#: module types whose forward depends on ``training``
MODE_SENSITIVE: tuple[type[nn.Module], ...] = (_DropoutNd, _BatchNorm, _InstanceNorm)


def mode_sensitive(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The submodules whose behaviour changes with train()/eval() (instance norm only
    when it tracks running statistics)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, _InstanceNorm) and not module.track_running_stats:
            continue
        if isinstance(module, MODE_SENSITIVE):
            found.append((name, module))
    return found


class ModeWatch:
    """Remembers the mode of the forwards between two optimizer steps."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sensitive = mode_sensitive(model)
        self.forwards = 0
        self._eval_forward_since_step = False

    def on_forward(self, grad_enabled: bool) -> Finding | None:
        """Called at each forward of the model: a finding when it evaluates (no grad)
        with dropout/batch norm still in training mode."""
        self.forwards += 1
        if not self.sensitive:
            return None
        if grad_enabled:
            if not self.model.training:
                self._eval_forward_since_step = True
            return None
        if self.model.training and self._active_names():
            return _eval_in_train_mode(self._active_names())
        return None

    def on_step(self) -> Finding | None:
        """Called before each optimizer step: a finding when a forward since the last
        step ran in eval mode (dropout off, batch norm frozen) with gradients on."""
        eval_forward, self._eval_forward_since_step = self._eval_forward_since_step, False
        if not eval_forward or self._active_names():
            return None
        names = [name for name, _ in self.sensitive]
        shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
        return Finding(
            "eval-mode", Severity.ERROR,
            f"the optimizer stepped after a forward in eval mode: {shown} behave as in "
            "evaluation (dropout off, batch norm using running statistics)", "model.eval()",
            "call model.train() when training resumes after evaluation")

    def _active_names(self) -> list[str]:
        return [name for name, module in self.sensitive if module.training]


def _eval_in_train_mode(names: list[str]) -> Finding:
    shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    return Finding(
        "eval-mode", Severity.WARNING,
        f"the model ran a forward under torch.no_grad() in training mode: {shown} still "
        "apply dropout / update batch-norm statistics (evaluating in training mode)",
        "model.train()",
        "call model.eval() before evaluating (and model.train() after)")


def not_in_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer,
                     names: dict[int, str]) -> Finding | None:
    """Trainable parameters of ``model`` that no param_group of ``optimizer`` holds (the
    finding of :mod:`torchdoctor.diagnoses.parameters`)."""
    trainable = [(names.get(id(p), "?"), p) for p in model.parameters() if p.requires_grad]
    missing = parameters.not_in_optimizer(trainable, optimizer)
    return parameters.not_in_optimizer_finding(missing, len(trainable), type(model).__name__)
