"""What produced a model's output: the final activation (Softmax, Sigmoid, ReLU...),
as a module or as a functional call on the ``return`` line of ``forward``.

The ``loss-function`` diagnosis confirms "sigmoid output" and "softmax before
CrossEntropyLoss" with it; ``overfit-one-batch`` explains a loss that cannot fall
(a non-negative final activation). No torch import at module level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchdoctor.diagnoses.source import forward_source_line
from torchdoctor.errors import user_code

if TYPE_CHECKING:
    from torch import nn

    from torchdoctor.scriptrun.observations import ModuleInfo

#: activations whose outputs cannot be negative (or are probabilities)
NON_NEGATIVE = ("ReLU", "ReLU6", "Softmax", "Sigmoid", "Softplus", "Hardsigmoid")
_FUNCTIONAL_ACTIVATION = re.compile(
    r"(?:\bF\.|functional\.|torch\.|\.)(softmax|log_softmax|sigmoid|relu|relu6|softplus)\(")


@dataclass(frozen=True)
class FinalActivation:
    """What produced the model's output: an activation module or a source line."""

    name: str  #: "Softmax", "relu", ...
    location: str


def final_activation(model: nn.Module, inputs: Any, label: str) -> FinalActivation | None:
    """The activation that produced ``model``'s output on ``inputs`` (runs one
    ``no_grad`` forward; what the model raises comes out as
    :class:`~torchdoctor.errors.UserCodeError`): see :func:`final_activation_after`."""
    return final_activation_after(_last_leaf(model, inputs), model, label)


def final_activation_after(last_leaf: ModuleInfo | None, model: nn.Module,
                           label: str) -> FinalActivation | None:
    """The final activation, given the last leaf module that ran (a forward probe has
    it): that module when it is one of :data:`NON_NEGATIVE` (or LogSoftmax), else a
    functional call on the ``return`` line of the model's forward. None otherwise."""
    if last_leaf is not None and last_leaf.type_name in (*NON_NEGATIVE, "LogSoftmax"):
        return FinalActivation(last_leaf.type_name, f"{label}: {last_leaf.describe()}")
    return _functional_on_return(model)


def _last_leaf(model: nn.Module, inputs: Any) -> ModuleInfo | None:
    import torch

    from torchdoctor.hooks import module_info
    from torchdoctor.reference.trainer import forward

    order: list[tuple[str, nn.Module]] = []
    handles = [m.register_forward_hook(lambda mod, a, o, n=name: order.append((n, mod)))
               for name, m in model.named_modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad(), user_code():
            forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return module_info(*order[-1]) if order else None


def _functional_on_return(model: nn.Module) -> FinalActivation | None:
    found = forward_source_line(model, lambda code: code.lstrip().startswith("return"),
                                last=True)
    if found is None:
        return None
    location, code = found
    match = _FUNCTIONAL_ACTIVATION.search(code)
    return FinalActivation(match.group(1), str(location)) if match else None
