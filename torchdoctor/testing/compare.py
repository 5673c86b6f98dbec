"""``explain_comparison``: what pytest shows for a failed ``==`` between tensors or
``torch.Size`` objects (shape, dtype, device, NaN count, maximum difference)."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.testing.describe import dtype_name, has_values


def explain_comparison(op: str, left: Any, right: Any) -> list[str] | None:
    """Lines explaining a failed comparison of tensors or ``torch.Size`` objects (for
    pytest's ``pytest_assertrepr_compare``), or None for other operands."""
    if isinstance(left, torch.Size) or isinstance(right, torch.Size):
        return _explain_shapes(op, left, right)
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        return _explain_tensors(op, left, right)
    return None


def _as_shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (torch.Size, tuple, list)) and all(
            isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _explain_shapes(op: str, left: Any, right: Any) -> list[str] | None:
    a, b = _as_shape(left), _as_shape(right)
    if a is None or b is None:
        return None
    lines = [f"shape {a} {op} {b}"]
    if len(a) != len(b):
        lines.append(f"number of dimensions differs: {len(a)} != {len(b)}")
    lines.extend(f"dim {i}: {x} != {y}" for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return lines


def _brief(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and value.device.type != "meta":
            return f"tensor({value.item()!r})"
        return f"tensor of shape {tuple(value.shape)}"
    return " ".join(repr(value).split())[:60]


def _describe_operand(side: str, value: Any) -> str:
    if not isinstance(value, torch.Tensor):
        return f"{side}: {_brief(value)} ({type(value).__name__})"
    text = (f"{side}: shape {tuple(value.shape)}, dtype {dtype_name(value)}, "
            f"device {value.device}")
    if has_values(value):
        nan = int(torch.isnan(value).sum())
        text += f", {nan} NaN" if nan else ""
    return text


def _explain_tensors(op: str, left: Any, right: Any) -> list[str]:
    lines = [f"{_brief(left)} {op} {_brief(right)}",
             _describe_operand("left", left), _describe_operand("right", right)]
    try:
        a = left if isinstance(left, torch.Tensor) else torch.as_tensor(left)
        b = right if isinstance(right, torch.Tensor) else torch.as_tensor(right)
    except (TypeError, ValueError, RuntimeError):  # the other operand is not numeric
        return lines
    if a.device != b.device or "meta" in (a.device.type, b.device.type):
        return lines
    try:
        diff = (a.detach().double() - b.detach().double()).abs()
    except RuntimeError as exc:  # shapes that do not broadcast
        return [*lines, f"cannot compare element-wise: {str(exc).splitlines()[0]}"]
    finite = diff[torch.isfinite(diff)]
    if finite.numel():
        lines.append(f"maximum difference: {float(finite.max()):.6g}")
    return lines
