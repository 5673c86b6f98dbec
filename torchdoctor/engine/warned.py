"""Warnings raised while a check runs, kept out of the user's terminal.

Model-mode checks run copies of the user's model many times (a forward on the ``meta``
device, a one-batch fit, a replay); each warning the model raises (a deprecated call, a
shape it tolerates) would otherwise print once per check, pointing into torchdoctor's
own files. They are collected instead, and the report names each distinct one once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from torchdoctor.findings import CheckResult

#: characters of a warning's first sentence kept in the report
_KEPT = 160
#: distinct warnings named in the report's note
_NAMED = 3


@contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collect the warnings raised in the block; the yielded list is filled, one
    ``Category: first line`` entry per distinct warning, when the block ends. The
    caller's warning filters are restored."""
    distinct: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield distinct
        finally:
            for item in caught:
                text = f"{item.category.__name__}: {_first_sentence(str(item.message))}"
                if text not in distinct:
                    distinct.append(text)


def _first_sentence(message: str) -> str:
    """The message's first sentence, cut at a word (with "...") past :data:`_KEPT`."""
    first = (message.splitlines() or [""])[0].split(". ")[0].rstrip(".")
    if len(first) <= _KEPT:
        return first
    return first[:_KEPT].rsplit(" ", 1)[0] + "..."


def warning_notes(results: list[CheckResult], preparing: list[str]) -> list[str]:
    """The report's note about the warnings collected while preparing (``preparing``)
    and by the checks: each distinct one once, however many checks saw it."""
    distinct = list(dict.fromkeys([*preparing, *(w for r in results for w in r.warnings)]))
    if not distinct:
        return []
    more = f"; and {len(distinct) - _NAMED} more" if len(distinct) > _NAMED else ""
    return ["warnings raised while the checks ran (e.g. by copies of your model), shown "
            f"once: {'; '.join(distinct[:_NAMED])}{more}"]
