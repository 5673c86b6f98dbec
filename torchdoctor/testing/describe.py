"""How the helpers' messages name tensors and parameters: shapes, dtypes, owners."""

from __future__ import annotations

import torch
from torch import nn


def shape_text(tensor: torch.Tensor) -> str:
    """``(4, 3)``: the shape as the messages print it."""
    return f"({', '.join(str(s) for s in tensor.shape)})"


def dtype_name(tensor: torch.Tensor) -> str:
    """``float32`` for ``torch.float32``."""
    return str(tensor.dtype)[6:]


def has_values(tensor: torch.Tensor) -> bool:
    """Whether the tensor holds float/complex values that can be NaN (not on ``meta``,
    which has no data to look at)."""
    return (tensor.is_floating_point() or tensor.is_complex()) and tensor.device.type != "meta"


def owner_type(model: nn.Module, param_name: str) -> str:
    """The type name of the module owning parameter or buffer ``param_name``."""
    return type(model.get_submodule(param_name.rpartition(".")[0])).__name__


def where(model: nn.Module, param_name: str) -> str:
    """``fc1.weight (Linear)``: the parameter and the type of the module owning it."""
    return f"{param_name} ({owner_type(model, param_name)})"
