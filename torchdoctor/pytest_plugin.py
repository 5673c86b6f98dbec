"""torchdoctor's pytest plugin (entry point ``pytest11``; disable with ``-p no:torchdoctor``).

What it adds to every pytest run, at almost no cost when unused (torch is imported only
by the fixtures and hooks that need it):

* options ``--torchdoctor TARGET`` (each check on each target becomes a test item,
  ``model.py::torchdoctor::nan-loss``) and ``--torchdoctor-select/-ignore/-device/...``,
  each mirrored by an ini setting (``torchdoctor_targets``, ``torchdoctor_select``...);
* fixtures ``doctor``, ``reference_batch`` and ``watch``;
* the marker ``@pytest.mark.torchdoctor(select=..., ignore=...)`` (defaults of ``doctor``);
* explanations of failed comparisons of tensors and ``torch.Size`` objects.

Tests that use a torchdoctor fixture or marker get the process state (RNGs, grad mode,
anomaly mode, global hooks...) restored after them.

This module is what pytest loads: it holds the hook functions and the fixtures (pytest
finds both as attributes of this module). The work is done in :mod:`torchdoctor._pytest`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# Before anything imports torchdoctor.testing (a package: this covers its submodules),
# so that its asserts get pytest's explanations.
pytest.register_assert_rewrite("torchdoctor.testing")

from torchdoctor._pytest.assertrepr import explain  # noqa: E402
from torchdoctor._pytest.fixtures import (  # noqa: E402
    REFERENCE_BATCH_SIZE,
    Doctor,
    doctor,
    reference_batch,
)
from torchdoctor._pytest.items import (  # noqa: E402
    CheckFailed,
    CheckItem,
    TargetCollector,
    add_target_items,
    display_name,
)
from torchdoctor._pytest.markers import (  # noqa: E402
    FIXTURES,
    MARKER,
    MARKER_KWARGS,
    check_markers,
    marker_problems,
    marker_selection,
    register_marker,
    uses_torchdoctor,
)
from torchdoctor._pytest.options import add_options  # noqa: E402
from torchdoctor._pytest.settings import (  # noqa: E402
    KNOWN_IDS_KEY,
    SETTINGS_KEY,
    Settings,
    known_check_ids,
    read_settings,
    resolve_target,
    settings_of,
    split_ids,
)
from torchdoctor._pytest.watch import WATCHES_KEY, WatchFactory, verify_watches, watch  # noqa: E402

__all__ = [
    "FIXTURES",
    "KNOWN_IDS_KEY",
    "MARKER",
    "MARKER_KWARGS",
    "REFERENCE_BATCH_SIZE",
    "SETTINGS_KEY",
    "WATCHES_KEY",
    "CheckFailed",
    "CheckItem",
    "Doctor",
    "Settings",
    "TargetCollector",
    "WatchFactory",
    "display_name",
    "doctor",
    "known_check_ids",
    "marker_problems",
    "marker_selection",
    "read_settings",
    "reference_batch",
    "resolve_target",
    "settings_of",
    "split_ids",
    "uses_torchdoctor",
    "watch",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options in their own group, each with an ini setting of the same meaning."""
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and read the settings."""
    register_marker(config)
    config.stash[SETTINGS_KEY] = read_settings(config)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Validate markers, then add the check items of each --torchdoctor target (first,
    so that -k and -m deselect among them too)."""
    check_markers(config, items)
    add_target_items(session, items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    """After a test that used ``watch`` returned, judge what its watches found."""
    result = yield
    verify_watches(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    """Restore RNGs, grad/anomaly/deterministic modes and global torch hooks after a test
    that uses torchdoctor."""
    if not uses_torchdoctor(item):
        return (yield)
    from torchdoctor.engine.state import preserved_state

    with preserved_state():
        return (yield)


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: object,
                              right: object) -> list[str] | None:
    """Explain failed comparisons of tensors and ``torch.Size`` objects (shape, dtype,
    device, maximum difference, NaN count). None for anything else; never raises."""
    return explain(op, left, right)
