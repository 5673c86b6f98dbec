"""Wording shared by every diagnosis: how lists of names and shapes are quoted in a
message."""

from __future__ import annotations

from collections.abc import Sequence

#: names quoted in a message before "and N more"
SHOWN_NAMES = 3


def name_list(names: Sequence[str], shown: int = SHOWN_NAMES) -> str:
    """``a, b, c and 4 more``: the first ``shown`` names, then how many were left out."""
    listed = ", ".join(names[:shown])
    more = len(names) - shown
    return f"{listed} and {more} more" if more > 0 else listed


def format_shape(shape: Sequence[int]) -> str:
    """``(64, 1, 28, 28)``: a shape as a tuple of ints."""
    return str(tuple(int(s) for s in shape))


def dtype_name(dtype: object) -> str:
    """``float32`` for ``torch.float32`` (or its name as a string)."""
    return str(dtype).replace("torch.", "")
