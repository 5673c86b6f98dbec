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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# Before anything imports torchdoctor.testing, so its asserts get pytest's explanations.
pytest.register_assert_rewrite("torchdoctor.testing")

from torchdoctor.context import (  # noqa: E402
    DEFAULT_LIMIT_BATCHES,
    DEFAULT_MAX_STEPS,
    DEFAULT_SEED,
    DEFAULT_TIMEOUT,
    CheckOptions,
)
from torchdoctor.errors import UsageError  # noqa: E402
from torchdoctor.findings import TARGET_CHECK_ID, CheckResult, Outcome, Report  # noqa: E402

if TYPE_CHECKING:
    import torch
    from _pytest._code.code import ExceptionInfo, TerminalRepr

    from torchdoctor.runner import Diagnosis

MARKER = "torchdoctor"
MARKER_KWARGS = ("select", "ignore")
FIXTURES = ("doctor", "reference_batch", "watch")
REFERENCE_BATCH_SIZE = 64


# ---------------------------------------------------------------- options and settings


@dataclass(frozen=True)
class _Option:
    """One setting: a command-line flag and the ini key of the same meaning."""

    flag: str
    ini: str
    ini_type: str
    metavar: str
    help: str


_OPTIONS = (
    _Option("--torchdoctor", "torchdoctor_targets", "linelist", "TARGET",
            "diagnose TARGET (file.py, file.py::name or package.module:name): each "
            "check becomes a test item TARGET::torchdoctor::CHECK (repeatable)"),
    _Option("--torchdoctor-select", "torchdoctor_select", "linelist", "IDS",
            "comma-separated check ids to run (default: all)"),
    _Option("--torchdoctor-ignore", "torchdoctor_ignore", "linelist", "IDS",
            "comma-separated check ids to leave out"),
    _Option("--torchdoctor-device", "torchdoctor_device", "string", "DEVICE",
            "device the checks train copies on (default: cpu)"),
    _Option("--torchdoctor-seed", "torchdoctor_seed", "string", "N",
            f"seed of the checks and of the reference batch (default: {DEFAULT_SEED})"),
    _Option("--torchdoctor-timeout", "torchdoctor_timeout", "string", "SECONDS",
            f"time limit of a target's script run (default: {DEFAULT_TIMEOUT:g})"),
    _Option("--torchdoctor-limit-batches", "torchdoctor_limit_batches", "string", "N",
            f"batches per DataLoader pass in a script run (default: {DEFAULT_LIMIT_BATCHES})"),
    _Option("--torchdoctor-max-steps", "torchdoctor_max_steps", "string", "N",
            f"optimizer steps applied in a script run (default: {DEFAULT_MAX_STEPS})"),
    _Option("--torchdoctor-data", "torchdoctor_data", "string", "DIR",
            "FashionMNIST root (default: $TORCHDOCTOR_DATA, else ./data; synthetic data "
            "when absent)"),
)

_REPEATED = {"--torchdoctor", "--torchdoctor-select", "--torchdoctor-ignore"}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options in their own group, each with an ini setting of the same meaning."""
    group = parser.getgroup("torchdoctor", "torchdoctor: why a PyTorch model does not train")
    for option in _OPTIONS:
        action = "append" if option.flag in _REPEATED else "store"
        group.addoption(option.flag, action=action, dest=option.ini, default=None,
                        metavar=option.metavar, help=option.help)
        default: Any = [] if option.ini_type == "linelist" else ""
        parser.addini(option.ini, f"{option.help} (as {option.flag})",
                      type=option.ini_type, default=default)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings:
    """The plugin's settings: command line over ini over defaults."""

    targets: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    options: CheckOptions = field(default_factory=CheckOptions)


SETTINGS_KEY = pytest.StashKey[Settings]()
KNOWN_IDS_KEY = pytest.StashKey[list[str]]()


def _raw(config: pytest.Config, name: str) -> tuple[Any, bool]:
    """The value of a setting and whether it came from the command line."""
    value = config.getoption(name)
    if value is not None:
        return value, True
    return config.getini(name), False


def split_ids(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """Check ids from ``"a,b"``, ``["a", "b c"]``...: split on commas and whitespace."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    return tuple(part for item in items for part in re.split(r"[,\s]+", str(item)) if part)


def _number(config: pytest.Config, name: str, kind: Callable[[str], Any], default: Any) -> Any:
    value, _ = _raw(config, name)
    if value in ("", None):
        return default
    try:
        number = kind(str(value))
    except ValueError:
        raise pytest.UsageError(f"{name} (--{name.replace('_', '-')}): expected "
                                f"{'an integer' if kind is int else 'a number'}, "
                                f"got {value!r}") from None
    if number < 0 or (kind is float and number == 0):
        raise pytest.UsageError(f"{name}: expected a positive value, got {value!r}")
    return number


def _targets(config: pytest.Config) -> tuple[str, ...]:
    values, from_cli = _raw(config, "torchdoctor_targets")
    # relative paths: from the invocation directory on the command line, from the ini
    # file's directory in the ini file (as pytest does for testpaths)
    base = config.invocation_params.dir if from_cli else (
        config.inipath.parent if config.inipath else config.rootpath)
    return tuple(resolve_target(str(v), Path(base)) for v in values if str(v).strip())


def resolve_target(spec: str, base: Path) -> str:
    """``spec`` with a relative ``file.py`` part made absolute against ``base``."""
    spec = spec.strip()
    file_part, sep, rest = spec.partition("::")
    if not file_part.endswith(".py"):
        return spec
    path = Path(file_part)
    return f"{path if path.is_absolute() else base / path}{sep}{rest}"


def read_settings(config: pytest.Config) -> Settings:
    """Settings from the command line and ini file; pytest.UsageError on bad values."""
    options = CheckOptions(
        device=str(_raw(config, "torchdoctor_device")[0] or "cpu"),
        seed=_number(config, "torchdoctor_seed", int, DEFAULT_SEED),
        limit_batches=_number(config, "torchdoctor_limit_batches", int, DEFAULT_LIMIT_BATCHES),
        max_steps=_number(config, "torchdoctor_max_steps", int, DEFAULT_MAX_STEPS),
        timeout=_number(config, "torchdoctor_timeout", float, DEFAULT_TIMEOUT),
        data_root=str(_raw(config, "torchdoctor_data")[0]) or None,
    )
    settings = Settings(_targets(config), split_ids(_raw(config, "torchdoctor_select")[0]),
                        split_ids(_raw(config, "torchdoctor_ignore")[0]), options)
    for check_id in (*settings.select, *settings.ignore):
        _require_known(config, check_id, "--torchdoctor-select/--torchdoctor-ignore")
    return settings


def known_check_ids(config: pytest.Config) -> list[str]:
    """Ids of every installed check (loaded once per run, and only when needed)."""
    if KNOWN_IDS_KEY not in config.stash:
        from torchdoctor.plugins import collect_checks, make_plugin_manager

        classes, _problems = collect_checks(make_plugin_manager().manager)
        config.stash[KNOWN_IDS_KEY] = [str(getattr(cls, "id", "")) for cls in classes]
    return config.stash[KNOWN_IDS_KEY]


def _require_known(config: pytest.Config, check_id: str, where: str) -> None:
    known = known_check_ids(config)
    if check_id not in known:
        raise pytest.UsageError(f"{where}: unknown check id {check_id!r}; known: "
                                f"{', '.join(known)}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and read the settings."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(select=None, ignore=None): check ids the `doctor` fixture runs in this "
        "test (default: --torchdoctor-select/--torchdoctor-ignore); the test's torch and "
        "RNG state is restored afterwards")
    config.stash[SETTINGS_KEY] = read_settings(config)


def settings_of(config: pytest.Config) -> Settings:
    """The plugin's settings for this run."""
    return config.stash.get(SETTINGS_KEY, Settings())


# ---------------------------------------------------------------- the marker


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


def marker_selection(node: pytest.Item, settings: Settings) -> tuple[tuple[str, ...],
                                                                     tuple[str, ...]]:
    """(select, ignore) for a test: its closest marker's values over the settings'."""
    mark = node.get_closest_marker(MARKER)
    kwargs = mark.kwargs if mark is not None else {}
    select = split_ids(kwargs["select"]) if kwargs.get("select") is not None else settings.select
    ignore = split_ids(kwargs["ignore"]) if kwargs.get("ignore") is not None else settings.ignore
    return select, ignore


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Validate markers, then add the check items of each --torchdoctor target (first,
    so that -k and -m deselect among them too)."""
    marked = [item for item in items if item.get_closest_marker(MARKER) is not None]
    if marked:
        known = known_check_ids(config)
        problems = [p for item in marked for p in marker_problems(item, known)]
        if problems:
            raise pytest.UsageError("\n".join(problems))
    for spec in settings_of(config).targets:
        collector = TargetCollector.from_parent(session, spec=spec)
        items.extend(session.genitems(collector))  # type: ignore[arg-type]


# ---------------------------------------------------------------- check items


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
        from torchdoctor.runner import Diagnosis
        from torchdoctor.target import parse_target

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
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)
        assert self.diagnosis is not None
        try:
            result = self.diagnosis.run_check(check_id)
        except UsageError as exc:  # the target could not be run or has no model
            self.failure = f"{self.spec}: {exc}"
            pytest.fail(self.failure, pytrace=False)
        self.results[check_id] = result
        return result

    def run_findings_report(self) -> Report:
        """The whole report (runs every check not run yet): for the ``target`` item."""
        assert self.diagnosis is not None
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)
        return self.diagnosis.report()

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
            report = self.parent.run_findings_report()
            self.result = CheckResult(TARGET_CHECK_ID, _outcome(report),
                                      findings=list(report.run_findings))
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


def _outcome(report: Report) -> Outcome:
    from torchdoctor.findings import outcome_for

    return outcome_for(list(report.run_findings))


# ---------------------------------------------------------------- fixtures


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
        from torchdoctor.runner import diagnose_model

        report = diagnose_model(model, batch=batch, loss_fn=loss_fn,
                                optimizer_factory=optimizer_factory, options=self.options,
                                **self._selection(select, ignore), name=name)
        return self._keep(report)

    def diagnose(self, target: str, *, select: Sequence[str] | None = None,
                 ignore: Sequence[str] | None = None) -> Report:
        """Diagnose a TARGET (``file.py``, ``file.py::name``, ``pkg.module:name``)."""
        from torchdoctor.runner import diagnose

        return self._keep(diagnose(target, self.options, **self._selection(select, ignore)))

    def assert_healthy(self, model: Any, *, strict: bool = False, **kwargs: Any) -> Report:
        """:meth:`check`, then fail on error findings (``strict``: warnings too) or
        crashed checks, showing the report."""
        __tracebackhide__ = True
        from torchdoctor.testing import assert_report_ok

        return assert_report_ok(self.check(model, **kwargs), strict=strict)

    def _selection(self, select: Sequence[str] | None,
                   ignore: Sequence[str] | None) -> dict[str, Sequence[str] | None]:
        chosen = self.select if select is None else split_ids(select)
        left_out = self.ignore if ignore is None else split_ids(ignore)
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
    from torchdoctor.data import reference_batch as make_batch

    options = settings_of(request.config).options
    inputs, targets, kind = make_batch(REFERENCE_BATCH_SIZE, root=options.data_root,
                                       seed=options.seed)
    request.node.user_properties.append(("torchdoctor_data", kind))
    return inputs, targets


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
        from torchdoctor.monitors import watch

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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    """After a test that used ``watch`` returned, judge what its watches found."""
    result = yield
    factory = item.stash.get(WATCHES_KEY, None)
    if factory is not None:
        factory.verify()
    return result


# ---------------------------------------------------------------- state and explanations


def uses_torchdoctor(item: pytest.Item) -> bool:
    """Whether a test uses a torchdoctor fixture or marker (only those pay for state
    preservation)."""
    names = getattr(item, "fixturenames", ())
    return item.get_closest_marker(MARKER) is not None or any(n in names for n in FIXTURES)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    """Restore RNGs, grad/anomaly/deterministic modes and global torch hooks after a test
    that uses torchdoctor."""
    if not uses_torchdoctor(item):
        return (yield)
    from torchdoctor.state import preserved_state

    with preserved_state():
        return (yield)


def _from_torch(value: object) -> bool:
    return type(value).__module__.startswith("torch")


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: object,
                              right: object) -> list[str] | None:
    """Explain failed comparisons of tensors and ``torch.Size`` objects (shape, dtype,
    device, maximum difference, NaN count). None for anything else; never raises."""
    try:
        if not (_from_torch(left) or _from_torch(right)):
            return None
        from torchdoctor.testing import explain_comparison

        return explain_comparison(op, left, right)
    except Exception:  # an explanation must never break the assertion report
        return None
