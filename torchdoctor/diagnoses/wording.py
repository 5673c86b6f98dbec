"""Wording shared by every diagnosis: how lists of names are quoted in a message."""

from __future__ import annotations

from collections.abc import Sequence

#: names quoted in a message before "and N more"
SHOWN_NAMES = 3


def name_list(names: Sequence[str], shown: int = SHOWN_NAMES) -> str:
    """``a, b, c and 4 more``: the first ``shown`` names, then how many were left out."""
    listed = ", ".join(names[:shown])
    more = len(names) - shown
    return f"{listed} and {more} more" if more > 0 else listed
