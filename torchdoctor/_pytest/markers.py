"""The ``@pytest.mark.torchdoctor(select=..., ignore=...)`` marker, and which tests use
torchdoctor (a marker or a fixture of ours)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from torchdoctor._pytest.settings import Settings, ids_or, known_check_ids, split_ids

MARKER = "torchdoctor"
MARKER_KWARGS = ("select", "ignore")
FIXTURES = ("doctor", "reference_batch", "watch")


def register_marker(config: pytest.Config) -> None:
    """Document the marker (``pytest --markers``; also accepted under --strict-markers)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(select=None, ignore=None): check ids the `doctor` fixture runs in this "
        "test (default: --torchdoctor-select/--torchdoctor-ignore); the test's torch and "
        "RNG state is restored afterwards")


def marker_problems(item: pytest.Item, known: Sequence[str]) -> list[str]:
    """What is wrong with the ``torchdoctor`` markers of ``item`` (empty: nothing)."""
    problems = []
    for mark in item.iter_markers(MARKER):
        if mark.args:
            problems.append(f"positional arguments {mark.args!r}; use select=... or ignore=...")
        for key, value in mark.kwargs.items():
            if key not in MARKER_KWARGS:
                problems.append(f"unknown argument {key}=; allowed: {', '.join(MARKER_KWARGS)}")
                continue
            if value is not None and not isinstance(value, (str, list, tuple)):
                problems.append(f"{key}= must be a check id or a list of them, got {value!r}")
                continue
            unknown = [i for i in split_ids(value) if i not in known]
            if unknown:
                problems.append(f"{key}=: unknown check id(s) {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(known)}")
    return [f"{item.nodeid}: @pytest.mark.{MARKER}: {p}" for p in problems]


def check_markers(config: pytest.Config, items: Sequence[pytest.Item]) -> None:
    """pytest.UsageError listing every bad ``torchdoctor`` marker among ``items`` (the
    check ids are loaded only when some test is marked)."""
    marked = [item for item in items if item.get_closest_marker(MARKER) is not None]
    if not marked:
        return
    known = known_check_ids(config)
    problems = [p for item in marked for p in marker_problems(item, known)]
    if problems:
        raise pytest.UsageError("\n".join(problems))


def marker_selection(node: pytest.Item, settings: Settings) -> tuple[tuple[str, ...],
                                                                     tuple[str, ...]]:
    """(select, ignore) for a test: its closest marker's values over the settings'."""
    mark = node.get_closest_marker(MARKER)
    kwargs = mark.kwargs if mark is not None else {}
    return (ids_or(kwargs.get("select"), settings.select),
            ids_or(kwargs.get("ignore"), settings.ignore))


def uses_torchdoctor(item: pytest.Item) -> bool:
    """Whether a test uses a torchdoctor fixture or marker (only those pay for state
    preservation)."""
    names = getattr(item, "fixturenames", ())
    return item.get_closest_marker(MARKER) is not None or any(n in names for n in FIXTURES)
