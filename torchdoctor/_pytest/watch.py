"""The ``watch`` fixture: :func:`torchdoctor.watch` on a test's own training loop,
judged when the test function returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from torchdoctor._pytest.markers import MARKER
from torchdoctor.findings import Report


class WatchFactory:
    """The ``watch`` fixture: ``watch(model, optimizer, **kwargs)`` starts
    :func:`torchdoctor.watch` for this test (use it with ``with`` or leave it open).

    Findings are recorded (``policy="record"`` unless you pass another policy) and
    judged when the test function returns: watches still open are stopped, and error
    findings fail the test with the findings table. Every watch's report is attached
    to the test's report (section ``torchdoctor watch``).
    """

    def __init__(self, node: pytest.Item) -> None:
        self.node = node
        self.watches: list[Any] = []

    def __call__(self, model: Any, optimizer: Any, **kwargs: Any) -> Any:
        """Start watching ``model`` trained by ``optimizer``; returns the Watch."""
        from torchdoctor.monitor.watch import watch

        kwargs.setdefault("policy", "record")
        doc = watch(model, optimizer, **kwargs)
        self.watches.append(doc)
        return doc

    def stop_all(self) -> list[Report]:
        """Stop every watch still running (removing its hooks); return the reports."""
        reports = []
        for doc in self.watches:
            if doc.active:
                doc.stop()
            reports.append(doc.report())
        return reports

    def verify(self) -> None:
        """Stop the watches and fail the test on error findings."""
        __tracebackhide__ = True
        from torchdoctor.report import render_text
        from torchdoctor.testing import TorchDoctorAssertionError

        reports = self.stop_all()
        for report in reports:
            self.node.add_report_section("call", f"{MARKER} watch", render_text(report))
        errors = [f for report in reports for f in report.errors]
        if errors:
            failure = TorchDoctorAssertionError(
                f"torchdoctor.watch found {len(errors)} error finding(s) in this test's "
                "training loop", findings=errors)
            pytest.fail(str(failure), pytrace=False)


WATCHES_KEY = pytest.StashKey[WatchFactory]()


@pytest.fixture
def watch(request: pytest.FixtureRequest) -> Iterator[WatchFactory]:
    """Instrument a training loop inside a test: ``with watch(model, optimizer) as doc:``.
    The test fails on error findings (NaN loss, gradients carried over...)."""
    factory = WatchFactory(request.node)  # type: ignore[arg-type]
    request.node.stash[WATCHES_KEY] = factory
    try:
        yield factory
    finally:
        factory.stop_all()  # hooks never outlive the test, even when it failed
        del request.node.stash[WATCHES_KEY]


def verify_watches(item: pytest.Item) -> None:
    """Judge the watches of a test that used the ``watch`` fixture (no-op otherwise)."""
    __tracebackhide__ = True
    factory = item.stash.get(WATCHES_KEY, None)
    if factory is not None:
        factory.verify()
