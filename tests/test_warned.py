"""Warnings the user's model raises while checks run copies of it: collected, named once
in the report, never printed per check (pytest's filterwarnings=error would fail here
if one escaped)."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest

from torchdoctor.engine.runner import diagnose
from torchdoctor.engine.warned import collected_warnings, warning_notes
from torchdoctor.findings import CheckResult, Outcome

WARNING_MODEL = """
import warnings
import torch
from torch import nn


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(),
                                  nn.Linear(32, 10))

    def forward(self, x):
        warnings.warn("Noisy.forward: this input layout is deprecated. Use another one.",
                      UserWarning)
        return self.body(x)


model = Noisy()
"""


def test_distinct_warnings_are_collected_and_filters_restored() -> None:
    filters_before = list(warnings.filters)
    with collected_warnings() as seen:
        for _ in range(3):
            warnings.warn("first. more words", UserWarning, stacklevel=1)
        warnings.warn("x" * 400, DeprecationWarning, stacklevel=1)
    assert seen[0] == "UserWarning: first"
    assert seen[1].startswith("DeprecationWarning: xxx") and len(seen) == 2
    assert warnings.filters == filters_before


def test_the_report_names_each_distinct_warning_once() -> None:
    results = [CheckResult("a", Outcome.PASSED, warnings=["UserWarning: w"]),
               CheckResult("b", Outcome.PASSED, warnings=["UserWarning: w"])]
    (note,) = warning_notes(results, ["UserWarning: w"])
    assert note.count("UserWarning: w") == 1
    assert warning_notes([CheckResult("a", Outcome.PASSED)], []) == []


@pytest.mark.slow
def test_a_model_that_warns_in_forward_gets_one_note(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "noisy.py"
    path.write_text(textwrap.dedent(WARNING_MODEL))
    monkeypatch.chdir(tmp_path)
    report = diagnose(f"{path}::model")
    notes = [n for n in report.notes if "Noisy.forward" in n]
    assert len(notes) == 1, report.notes
    assert "UserWarning: Noisy.forward: this input layout is deprecated" in notes[0]
    assert any(r.warnings for r in report.checks)
    assert "warnings" in next(r for r in report.checks if r.warnings).to_dict()
