"""Explanations of failed comparisons of tensors and ``torch.Size`` objects."""

from __future__ import annotations


def _from_torch(value: object) -> bool:
    return type(value).__module__.startswith("torch")


def explain(op: str, left: object, right: object) -> list[str] | None:
    """Lines for pytest's assertion report (shape, dtype, device, maximum difference,
    NaN count), or None for anything else; never raises. torch (and
    :mod:`torchdoctor.testing`) is imported only when an operand comes from torch."""
    try:
        if not (_from_torch(left) or _from_torch(right)):
            return None
        from torchdoctor.testing import explain_comparison

        return explain_comparison(op, left, right)
    except Exception:  # the operands are the user's (a tensor subclass runs its own
        # code on every torch op): an explanation must never break the assertion report
        return None
