"""Every check against its two example programs: ``examples/bugs/<check>.py`` has the bug,
``examples/bugs/<check>_fixed.py`` is the same program fixed.

On the buggy program the check must fail with an error finding (a warning for the few
checks that only warn, ``WARNINGS_ONLY``); on the fixed program it
must run and pass (skipped or crashed is not quiet: the check did not look), and no check
may call the fixed program wrong. A new check without both programs fails here. Each
program is diagnosed once per session (the ``example_report`` fixture); the tests beside
each check assert the exact words and locations of its finding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from torchdoctor.checks import BUILTIN_MODULES
from torchdoctor.findings import Outcome, Report, Severity

BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"
#: check id -> the stem of its example programs (the check's module name)
EXAMPLES = {module.replace("_", "-"): module for module in BUILTIN_MODULES}
#: checks whose findings are all warnings by design (a latent risk, never a wrong result:
#: an error would be a false accusation): their buggy example fails with a warning
WARNINGS_ONLY = {"risky-calls", "graph-kept-alive"}


def _describe(report: Report) -> str:
    """The outcomes and findings of a report, for assertion messages."""
    outcomes = ", ".join(f"{r.id}={r.outcome.value}" + (f" ({r.detail})" if r.detail else "")
                         for r in report.checks)
    findings = "".join(f"\n  {f.check} {f.severity.value} at {f.location}: {f.message}"
                       for f in report.findings)
    return f"[data: {report.data}] {outcomes}{findings}"


def test_every_check_has_a_buggy_and_a_fixed_example() -> None:
    assert EXAMPLES, "no built-in checks"
    missing = [f"{stem}{suffix}.py" for stem in EXAMPLES.values()
               for suffix in ("", "_fixed") if not (BUGS / f"{stem}{suffix}.py").is_file()]
    assert missing == [], f"examples/bugs/ lacks {missing}"


def test_every_example_program_belongs_to_a_check() -> None:
    """``<check>.py``, or a variant ``<check>_<pattern>.py`` for a second bug of the same
    check that cannot share the program (its own tests cover it)."""
    stems = {path.stem.removesuffix("_fixed") for path in BUGS.glob("*.py")}
    modules = set(EXAMPLES.values())
    strays = {stem for stem in stems
              if stem not in modules and not any(stem.startswith(m + "_") for m in modules)}
    assert strays == set()


@pytest.mark.parametrize("check", EXAMPLES)
def test_buggy_example_fails_the_check(check: str,
                                       example_report: Callable[[str], Report]) -> None:
    report = example_report(EXAMPLES[check])
    result = report.result(check)
    assert result is not None, _describe(report)
    assert result.outcome is Outcome.FAILED, _describe(report)
    wanted = Severity.WARNING if check in WARNINGS_ONLY else Severity.ERROR
    assert [f for f in result.findings if f.severity is wanted], _describe(report)
    assert all(f.check == check for f in result.findings)
    assert report.crashed == [], _describe(report)


@pytest.mark.parametrize("check", EXAMPLES)
def test_fixed_example_passes_every_check(check: str,
                                          example_report: Callable[[str], Report]) -> None:
    report = example_report(f"{EXAMPLES[check]}_fixed")
    result = report.result(check)
    assert result is not None, _describe(report)
    assert result.outcome is Outcome.PASSED, _describe(report)
    assert report.errors == [], _describe(report)  # from any check, or about the run
    assert report.crashed == [], _describe(report)
    assert report.exit_code == 0, _describe(report)
