"""The ``doctor`` and ``reference_batch`` fixtures: torchdoctor's checks and data
inside a test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

from torchdoctor._pytest.markers import MARKER, marker_selection
from torchdoctor._pytest.settings import ids_or, settings_of
from torchdoctor.engine.context import CheckOptions
from torchdoctor.findings import Report

if TYPE_CHECKING:
    import torch

REFERENCE_BATCH_SIZE = 64


class Doctor:
    """The ``doctor`` fixture: torchdoctor's model checks inside a test.

    Defaults come from the test's ``@pytest.mark.torchdoctor(select=..., ignore=...)``,
    else from ``--torchdoctor-select/--torchdoctor-ignore``; device, seed and data root
    from the ``--torchdoctor-*`` options. Every report made is attached to the test's
    report (section ``torchdoctor``) and kept in :attr:`reports`.
    """

    def __init__(self, node: pytest.Item, options: CheckOptions, select: Sequence[str],
                 ignore: Sequence[str]) -> None:
        self.node = node
        self.options = options
        self.select = tuple(select)
        self.ignore = tuple(ignore)
        self.reports: list[Report] = []

    def check(self, model: Any, *, batch: Any = None, loss_fn: Any = None,
              optimizer_factory: Any = None, select: Sequence[str] | None = None,
              ignore: Sequence[str] | None = None, name: str = "model") -> Report:
        """Run the model-mode checks on copies of ``model``; return the report."""
        from torchdoctor.engine.runner import diagnose_model

        report = diagnose_model(model, batch=batch, loss_fn=loss_fn,
                                optimizer_factory=optimizer_factory, options=self.options,
                                **self._selection(select, ignore), name=name)
        return self._keep(report)

    def diagnose(self, target: str, *, select: Sequence[str] | None = None,
                 ignore: Sequence[str] | None = None) -> Report:
        """Diagnose a TARGET (``file.py``, ``file.py::name``, ``pkg.module:name``)."""
        from torchdoctor.engine.runner import diagnose

        return self._keep(diagnose(target, self.options, **self._selection(select, ignore)))

    def assert_healthy(self, model: Any, *, strict: bool = False, **kwargs: Any) -> Report:
        """:meth:`check`, then fail on error findings (``strict``: warnings too) or
        crashed checks, showing the report."""
        __tracebackhide__ = True
        from torchdoctor.testing import assert_report_ok

        return assert_report_ok(self.check(model, **kwargs), strict=strict)

    def _selection(self, select: Sequence[str] | None,
                   ignore: Sequence[str] | None) -> dict[str, Sequence[str] | None]:
        chosen = ids_or(select, self.select)
        left_out = ids_or(ignore, self.ignore)
        return {"select": chosen or None, "ignore": left_out or None}

    def _keep(self, report: Report) -> Report:
        from torchdoctor.report import render_text

        self.reports.append(report)
        self.node.add_report_section("call", MARKER, render_text(report))
        return report


@pytest.fixture
def doctor(request: pytest.FixtureRequest) -> Doctor:
    """torchdoctor's checks inside a test: ``doctor.check(model, batch=...)`` returns a
    Report, ``doctor.assert_healthy(model)`` fails on error findings."""
    settings = settings_of(request.config)
    select, ignore = marker_selection(request.node, settings)  # type: ignore[arg-type]
    return Doctor(request.node, settings.options, select, ignore)  # type: ignore[arg-type]


@pytest.fixture
def reference_batch(request: pytest.FixtureRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """A FashionMNIST training batch ``(images (64, 1, 28, 28) float in [0, 1], labels
    (64,) long)``; a synthetic stand-in of the same shape when the data is absent.
    Deterministic for a given ``--torchdoctor-seed``; a fresh copy for every test."""
    from torchdoctor.reference.data import reference_batch as make_batch

    options = settings_of(request.config).options
    inputs, targets, kind = make_batch(REFERENCE_BATCH_SIZE, root=options.data_root,
                                       seed=options.seed)
    request.node.user_properties.append(("torchdoctor_data", kind))
    return inputs, targets
