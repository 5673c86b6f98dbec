"""The training setup a script built for one of its models, as captured during the run.

:mod:`torchdoctor.scriptrun.setups` fills a :class:`CapturedSetup` per root model the
script trained: its optimizer(s) with their param groups (hyperparameters and which of
the model's parameters, by name), the loss, LR schedulers, a GradScaler, gradient
clipping and one real batch the script fed the model with its targets. Model mode
(:mod:`torchdoctor.engine.usersetup`) trains copies with it. Plain data: the only
tensors are the batch (detached CPU clones, taken once) and the loss module's copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ParamGroupSetup:
    """One param group: its hyperparameters (``lr``, ``weight_decay``, ``momentum``,
    ``betas``...) and the names of the model's parameters it holds."""

    options: dict[str, Any]
    params: list[str]
    #: parameters the group holds that are not the model's (another model, a layer
    #: replaced after the optimizer was built)
    foreign: int = 0


@dataclass
class OptimizerSetup:
    """An optimizer as the script built it (its initial learning rates: a scheduler's
    ``initial_lr``, before warmup or decay changed ``lr``)."""

    type_name: str
    #: the module of its class (``torch.optim.sgd``): only torch's own are rebuilt
    module: str
    defaults: dict[str, Any]
    groups: list[ParamGroupSetup]
    location: str = ""
    #: whether a scheduler had changed ``lr`` from ``initial_lr`` when it was first seen
    scheduled: bool = False
    applied_steps: int = 0

    def describe(self) -> str:
        """``SGD(lr=0.01, momentum=0.9)``: the first group's non-default settings."""
        if not self.groups:
            return f"{self.type_name}()"
        options = self.groups[0].options
        shown = [f"lr={_number(options.get('lr'))}"]
        for key in ("momentum", "weight_decay", "betas", "nesterov", "eps"):
            value = options.get(key)
            if value in (None, 0, 0.0, False) or (key == "betas" and value == (0.9, 0.999)) \
                    or (key == "eps" and value in (1e-8, 1e-6, 1e-10)):
                continue
            shown.append(f"{key}={_number(value)}")
        more = f", +{len(self.groups) - 1} param group(s)" if len(self.groups) > 1 else ""
        return f"{self.type_name}({', '.join(shown)}{more})"


@dataclass
class LossSetup:
    """The loss: an ``nn`` loss module (``module`` holds a CPU copy) or a functional
    loss of ``torch.nn.functional`` (``name`` and keyword ``options``)."""

    name: str
    functional: bool
    options: dict[str, Any] = field(default_factory=dict)
    module: Any = None
    location: str = ""
    #: the model returned a tuple/list and the loss took its first element
    first_of_tuple: bool = False
    #: the loss took the output reshaped to this shape (``output.view(-1, C)``)
    reshape: tuple[int, ...] | None = None

    def describe(self) -> str:
        """``CrossEntropyLoss`` or ``F.nll_loss``, with non-default options."""
        name = f"F.{self.name}" if self.functional else self.name
        shown = ", ".join(f"{k}={v}" for k, v in self.options.items()
                          if str(v) not in _DEFAULT_OPTIONS)
        return f"{name}({shown})" if shown else name


@dataclass
class CapturedSetup:
    """How the script trained one root model (``model``: its ObservedModel index)."""

    model: int
    model_type: str
    optimizers: list[OptimizerSetup] = field(default_factory=list)
    loss: LossSetup | None = None
    schedulers: list[str] = field(default_factory=list)
    grad_scaler: bool = False
    #: ``("norm", max_norm)`` / ``("value", clip_value)`` of clip_grad_*_ calls
    clipping: list[tuple[str, float]] = field(default_factory=list)
    #: the first batch (inputs, targets) of a supervised step: detached CPU clones
    inputs: Any = None
    targets: Any = None
    batch_size: int | None = None
    #: why the setup cannot be replayed on a copy (empty: it can)
    problems: list[str] = field(default_factory=list)

    def describe_training(self) -> str:
        """``SGD(lr=0.01, momentum=0.9), CrossEntropyLoss``."""
        parts = [o.describe() for o in self.optimizers] or ["no optimizer"]
        parts.append(self.loss.describe() if self.loss else "no loss call")
        return ", ".join(parts)

    def describe(self) -> str:
        """``SGD(lr=0.01, momentum=0.9), CrossEntropyLoss, a batch of 64 from the
        script`` (+ scheduler, clipping)."""
        parts = [self.describe_training()]
        if self.batch_size:
            parts.append(f"a batch of {self.batch_size} from the script")
        if self.schedulers:
            parts.append(f"{'/'.join(self.schedulers)} (initial lr used, no schedule)")
        parts += [f"clip_grad_{kind}_({_number(limit)})" for kind, limit in self.clipping[:1]]
        if self.grad_scaler:
            parts.append("GradScaler (not needed in float32)")
        return ", ".join(parts)


#: loss options shown only when they differ from these torch defaults
_DEFAULT_OPTIONS = ("mean", "-100", "0.0")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_number(v) for v in value) + ")"
    return str(value)
