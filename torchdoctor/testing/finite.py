"""``assert_finite``: NaN and inf in tensors, nested structures and whole modules.

The finiteness test and the finding id are :mod:`torchdoctor.diagnoses.nonfinite`'s
(``nan-loss``, as from the check and ``watch()``); the words here count the values and
name the tensor's place, which only an assertion on a given structure knows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchdoctor.diagnoses.nonfinite import NONFINITE_CHECK_ID, all_finite
from torchdoctor.findings import Finding
from torchdoctor.testing.describe import dtype_name, has_values, owner_type, shape_text
from torchdoctor.testing.errors import error, fail


@dataclass(frozen=True)
class _Leaf:
    """One tensor to check, with where it is and what it is (for the message)."""

    path: str
    kind: str  # "parameter", "gradient", "buffer" or "tensor"
    tensor: torch.Tensor
    owner: str = ""


def _module_leaves(model: nn.Module) -> Iterator[_Leaf]:
    for name, param in model.named_parameters():
        owner = owner_type(model, name)
        yield _Leaf(name, "parameter", param.detach(), owner)
        if param.grad is not None:
            yield _Leaf(name, "gradient", param.grad.detach(), owner)
    for name, buffer in model.named_buffers():
        yield _Leaf(name, "buffer", buffer.detach(), owner_type(model, name))


def _structure_leaves(value: Any, path: str) -> Iterator[_Leaf]:
    if isinstance(value, torch.Tensor):
        yield _Leaf(path, "tensor", value.detach())
    elif isinstance(value, (float, int)) and not isinstance(value, bool):
        yield _Leaf(path, "tensor", torch.tensor(float(value)))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _structure_leaves(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _structure_leaves(item, f"{path}[{index}]")


_FINITE_HINTS = {
    "parameter": "the weights were corrupted by an earlier step: lower the learning rate, "
                 "clip gradients (torch.nn.utils.clip_grad_norm_) and stop before "
                 "optimizer.step() when the loss is not finite",
    "gradient": "find the first module producing NaN/inf with torchdoctor.hooks."
                "NonFiniteTracer (or torch.autograd.set_detect_anomaly(True)); look for "
                "log/sqrt of values <= 0, division by zero and exp overflow",
    "buffer": "a running statistic went non-finite: check the inputs of this module "
              "(normalisation layers accumulate whatever they see)",
    "tensor": "check the inputs and the operations producing this value: division by zero, "
              "log of 0 (add an epsilon), exp overflow, uninitialised memory (torch.empty)",
}


def _finite_finding(leaf: _Leaf) -> Finding | None:
    tensor = leaf.tensor
    if not has_values(tensor) or all_finite(tensor):
        return None
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    if not nan and not inf:
        return None
    what = f"{leaf.kind} {leaf.path}" if leaf.kind != "gradient" else f"gradient of {leaf.path}"
    owner = f"{leaf.owner}, " if leaf.owner else ""
    message = (f"{what} ({owner}shape {shape_text(tensor)}, {dtype_name(tensor)}) holds "
               f"{nan} NaN and {inf} inf among {tensor.numel()} values")
    location = f"{leaf.path} ({leaf.owner})" if leaf.owner else leaf.path
    return error(NONFINITE_CHECK_ID, message, location, _FINITE_HINTS[leaf.kind])


def assert_finite(value: Any, *, name: str = "value") -> None:
    """Fail unless every float tensor in ``value`` is free of NaN and inf.

    ``value`` is a tensor, a number, a nested list/tuple/dict of them, or an
    ``nn.Module`` (its parameters, their gradients and its buffers are checked).
    """
    __tracebackhide__ = True
    if isinstance(value, nn.Module):
        leaves = _module_leaves(value)
    else:
        leaves = _structure_leaves(value, name)
    findings = [f for f in (_finite_finding(leaf) for leaf in leaves) if f is not None]
    if findings:
        fail(f"{len(findings)} tensor(s) hold NaN or inf", findings)
