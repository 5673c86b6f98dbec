"""``--torchdoctor TARGET``: one collector per target, one test item per check
(``model.py::torchdoctor::nan-loss``) plus ``target`` for a script's own findings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from torchdoctor._pytest.markers import MARKER
from torchdoctor._pytest.settings import settings_of
from torchdoctor.errors import UsageError
from torchdoctor.findings import TARGET_CHECK_ID, CheckResult, Finding, Outcome, outcome_for

if TYPE_CHECKING:
    from _pytest._code.code import ExceptionInfo, TerminalRepr

    from torchdoctor.engine.runner import Diagnosis

_T = TypeVar("_T")


def display_name(spec: str, rootpath: Path) -> str:
    """The target as shown in node ids: a path relative to the rootdir when it is inside."""
    file_part, sep, rest = spec.partition("::")
    if not file_part.endswith(".py"):
        return spec
    path = Path(file_part)
    try:
        shown = path.relative_to(rootpath).as_posix()
    except ValueError:
        shown = path.as_posix()
    return f"{shown}{sep}{rest}"


def add_target_items(session: pytest.Session, items: list[pytest.Item]) -> None:
    """Append the check items of each ``--torchdoctor`` target to ``items``."""
    for spec in settings_of(session.config).targets:
        collector = TargetCollector.from_parent(session, spec=spec)
        items.extend(session.genitems(collector))  # type: ignore[arg-type]


class TargetCollector(pytest.Collector):
    """The checks of one target. Node id ``TARGET::torchdoctor``; its script runs once,
    on the first item's setup, shared by all its items."""

    def __init__(self, *, spec: str, **kwargs: Any) -> None:
        name = display_name(spec, kwargs["parent"].config.rootpath)
        kwargs.setdefault("name", name)
        kwargs.setdefault("nodeid", f"{name}::{MARKER}")
        file_part = spec.partition("::")[0]
        if file_part.endswith(".py"):
            kwargs.setdefault("path", Path(file_part))
        super().__init__(**kwargs)
        self.spec = spec
        self.diagnosis: Diagnosis | None = None
        self.failure: str | None = None
        self.results: dict[str, CheckResult] = {}

    def collect(self) -> list[pytest.Item]:
        """One item per selected check (plus ``target`` for a script's own findings)."""
        from torchdoctor.engine.runner import Diagnosis
        from torchdoctor.engine.target import parse_target

        parsed = parse_target(self.spec)
        if parsed.path is not None and not parsed.path.is_file():
            raise UsageError(f"--torchdoctor {self.spec}: no such file")
        settings = settings_of(self.config)
        self.diagnosis = Diagnosis(self.spec, settings.options, select=settings.select or None,
                                   ignore=settings.ignore or None)
        ids = list(self.diagnosis.check_ids)
        if parsed.runs_as_script:
            ids.append(TARGET_CHECK_ID)
        return [CheckItem.from_parent(self, name=check_id) for check_id in ids]

    def repr_failure(self, excinfo: ExceptionInfo[BaseException],
                     style: Any = None) -> str | TerminalRepr:
        """A bad target is reported as its message, without a traceback."""
        if isinstance(excinfo.value, UsageError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def run(self, check_id: str) -> CheckResult:
        """The result of one check (the target is prepared on first use)."""
        result = self._prepared(lambda diagnosis: diagnosis.run_check(check_id))
        self.results[check_id] = result
        return result

    def run_findings(self) -> list[Finding]:
        """Findings about the script run itself, judged from the checks run so far (the
        items before ``target``; deselected checks are not run for it)."""
        return self._prepared(lambda diagnosis: diagnosis.run_findings())

    def _prepared(self, step: Callable[[Diagnosis], _T]) -> _T:
        """``step(diagnosis)``; a target that cannot be prepared fails this item and
        every later one with the same message, without a traceback."""
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)
        assert self.diagnosis is not None
        try:
            return step(self.diagnosis)
        except UsageError as exc:  # the target could not be run or has no model
            self.failure = f"{self.spec}: {exc}"
        # failing outside the except block: no "During handling of the above
        # exception" chain repeating the message
        pytest.fail(self.failure, pytrace=False)

    def teardown(self) -> None:
        """Let go of the prepared target (its models and observations)."""
        if self.diagnosis is not None:
            self.diagnosis.__exit__(None, None, None)


class CheckFailed(Exception):
    """A check item found problems; rendered by :meth:`CheckItem.repr_failure`."""

    def __init__(self, title: str, result: CheckResult) -> None:
        super().__init__(title)
        self.title = title
        self.result = result


class CheckItem(pytest.Item):
    """One check on one target: passes, fails with the findings table, is skipped when
    the check does not apply, and errors when the check crashed."""

    parent: TargetCollector

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(MARKER)
        self.result: CheckResult | None = None

    def setup(self) -> None:
        """Run the check (a crash is an error of this item, a skip a skip)."""
        if self.name == TARGET_CHECK_ID:
            findings = self.parent.run_findings()
            self.result = CheckResult(TARGET_CHECK_ID, outcome_for(findings), findings=findings)
            return
        self.result = result = self.parent.run(self.name)
        if result.outcome is Outcome.SKIPPED:
            pytest.skip(f"{self.name}: {result.detail or 'does not apply to this target'}")
        if result.outcome is Outcome.CRASHED:
            pytest.fail(f"check {self.name} crashed on {self.parent.spec}:\n{result.detail}",
                        pytrace=False)

    def runtest(self) -> None:
        """Fail when the check found an error or a warning."""
        assert self.result is not None
        if self.result.findings and self.result.outcome is not Outcome.FAILED:
            from torchdoctor.report import findings_table  # info findings, shown with -rP

            self.add_report_section("call", MARKER, findings_table(self.result.findings))
        if self.result.outcome is Outcome.FAILED:
            raise CheckFailed(f"torchdoctor check {self.name} failed on {self.parent.name}",
                              self.result)

    def repr_failure(self, excinfo: ExceptionInfo[BaseException],
                     style: Any = None) -> str | TerminalRepr:
        """The findings table instead of a traceback."""
        if isinstance(excinfo.value, CheckFailed):
            from torchdoctor.report import findings_table

            result = excinfo.value.result
            parts = [excinfo.value.title, findings_table(result.findings)]
            parts += [result.detail] if result.detail else []
            return "\n\n".join(parts)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the item is (the target's file) and the failure headline. (Not the node
        id: pytest would turn the dots of ``file.py`` into "::" in verbose output.)"""
        return self.path, None, f"{self.parent.name}: {MARKER} {self.name}"
