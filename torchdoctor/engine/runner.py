"""Running checks: prepare a target once, run each check in isolation, build a Report.

Flow: TARGET -> :mod:`torchdoctor.engine.target` (parse, run or import, find models) and
:mod:`torchdoctor.engine.setup` (the training setup, the user's hook functions) ->
:class:`Diagnosis` (one CheckContext, each check run inside ``preserved_state`` and
turned into a CheckResult, never an exception) -> :class:`~torchdoctor.findings.Report`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from torchdoctor.check import Check
from torchdoctor.diagnoses.no_gpu import (
    asked_for_missing_cuda,
    no_gpu_finding,
)
from torchdoctor.diagnoses.script_crash import crash_finding
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate, TrainingSetup
from torchdoctor.engine.onecheck import run_one_check
from torchdoctor.engine.setup import hook_candidates, training_setup, user_training_setup
from torchdoctor.engine.state import preserved_state
from torchdoctor.engine.target import (
    Target,
    discover_candidates,
    import_target_module,
    named_candidate,
    parse_target,
    script_candidates,
)
from torchdoctor.engine.usersetup import describe_setup, script_setup
from torchdoctor.engine.warned import collected_warnings, warning_notes
from torchdoctor.errors import TargetError, UsageError
from torchdoctor.findings import (
    TARGET_CHECK_ID,
    CheckResult,
    Finding,
    Report,
    Severity,
)
from torchdoctor.plugins import collect_checks, make_plugin_manager, register_user_module
from torchdoctor.scriptrun.observations import RunStatus, ScriptRun
from torchdoctor.scriptrun.phases import phase_dicts


def select_checks(classes: Sequence[type[Check]], select: Sequence[str] | None,
                  ignore: Sequence[str] | None) -> list[type[Check]]:
    """Filter check classes by id; an unknown id is a UsageError naming the known ones."""
    known = [c.id for c in classes]
    for check_id in [*(select or []), *(ignore or [])]:
        if check_id not in known:
            raise UsageError(f"unknown check id {check_id!r}; known: {', '.join(known)}")
    chosen = [c for c in classes if not select or c.id in select]
    return [c for c in chosen if c.id not in (ignore or [])]


class Diagnosis:
    """One target, prepared once (the script runs at most once), checked check by check.

    Used by :func:`diagnose`, by the CLI, and by the pytest plugin (one test item per
    check). Preparation happens on first use; a bad target raises TargetError then.
    """

    def __init__(self, target: str, options: CheckOptions | None = None, *,
                 select: Sequence[str] | None = None,
                 ignore: Sequence[str] | None = None) -> None:
        self.target = target
        self.options = options or CheckOptions()
        load = make_plugin_manager()
        self._manager = load.manager
        classes, problems = collect_checks(self._manager)
        self.notes = load.problems + problems
        self._classes = select_checks(classes, select, ignore)
        self._checks = {cls.id: cls() for cls in self._classes}
        self._context: CheckContext | None = None
        self._results: dict[str, CheckResult] = {}
        #: warnings raised while preparing (probing the models), see engine/warned.py
        self._preparing_warnings: list[str] = []
        self._run_findings: list[Finding] = []
        self._started = time.perf_counter()
        #: the script run of a file target (its output, its error), once prepared
        self.script_result: Any = None

    @property
    def check_ids(self) -> list[str]:
        """The ids of the selected checks, in run order."""
        return [c.id for c in self._classes]

    def __enter__(self) -> Diagnosis:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._context = None

    def context(self) -> CheckContext:
        """The prepared context (runs the script on first call)."""
        if self._context is None:
            with collected_warnings() as self._preparing_warnings:
                self._context = self._prepare()
        return self._context

    def run_check(self, check_id: str) -> CheckResult:
        """Run (once) and return the result of one check."""
        if check_id not in self._results:
            cls = next((c for c in self._classes if c.id == check_id), None)
            if cls is None:
                raise UsageError(f"check {check_id!r} is not selected")
            self._results[check_id] = run_one_check(self._checks[check_id], self.context())
        return self._results[check_id]

    def run_findings(self) -> list[Finding]:
        """Findings about the run itself (check id ``target``), judged from the checks
        run so far: a crash is 'unexplained' unless a check that ran explained it."""
        ctx = self.context()
        findings = [f for r in self._results.values() for f in r.findings]
        return self._run_findings + _run_findings(ctx.run, findings)

    def report(self) -> Report:
        """Run every selected check not run yet and return the report."""
        ctx = self.context()
        results = [self.run_check(check_id) for check_id in self.check_ids]
        return Report(
            target=self.target, mode=_mode_name(ctx), data=_data_name(ctx),
            setups=_setup_names(ctx),
            device=self.options.device, seconds=time.perf_counter() - self._started,
            checks=results, run_findings=self.run_findings(),
            notes=self.notes + (ctx.run.notes if ctx.run else [])
            + warning_notes(results, self._preparing_warnings),
            phases=phase_dicts(ctx.run),
            written=list(ctx.run.written) if ctx.run else [],
            written_more=ctx.run.written_more if ctx.run else 0)

    def _prepare(self) -> CheckContext:
        from torchdoctor.reference.data import NOTICE

        parsed = parse_target(self.target)
        with preserved_state(self.options.seed), NOTICE.deferred() as pending:
            ctx = self._prepare_script(parsed) if parsed.runs_as_script else \
                self._prepare_object(parsed)
        said = any("synthetic FashionMNIST stand-in" in n for n in (ctx.run.notes if ctx.run
                                                                     else []))
        if pending and not said and _trains_on_synthetic_reference(ctx):
            self.notes.append(SYNTHETIC_REFERENCE_NOTE)
        return ctx

    def _prepare_script(self, parsed: Target) -> CheckContext:
        from torchdoctor.scriptrun.script import run_script

        assert parsed.path is not None
        result = run_script(parsed.path, self.options, argv=list(self.options.script_args))
        self.script_result = result
        run = result.run
        missing = missing_package(run)
        if missing is not None:
            raise TargetError(f"{parsed.path} imports {missing!r}, which is not installed "
                              f"(at {run.error.location if run.error else parsed.path}): "
                              "install it in this environment, then run the check again.")
        if run.status is RunStatus.EXITED and not run.forwards:
            said = result.output.strip().splitlines()[-1:] or [""]
            raise TargetError(f"{parsed.path} exited before any model ran ({run.notes[-1]})"
                              f"{': ' + said[0] if said[0] else ''}. If it needs command-line "
                              "arguments, pass them with --script-args '...'")
        user_module = ModuleType(result.namespace.get("__name__", "__main__"))
        user_module.__dict__.update(result.namespace)
        register_user_module(self._manager, user_module)
        where = str(parsed.path)
        models = self._hook_candidates() or script_candidates(
            result.snapshots, result.namespace, result.models, where) or \
            self._discover_or_none(result.namespace, where, run)
        return _context(self.target, self.options, self._setup(), run, models,
                        explain_crash(self._manager, list(self._checks.values()), run))

    def _discover_or_none(self, namespace: dict[str, Any], where: str,
                          run: ScriptRun) -> list[ModelCandidate]:
        found = discover_candidates(namespace, where)
        trained = run.forwards or run.backwards or run.steps or run.error is not None
        if not found and not trained:
            raise TargetError(f"no model found in {where}: it neither builds a model when "
                              "run nor defines one. Name one (file.py::name) or define "
                              "torchdoctor_model()")
        return found

    def _prepare_object(self, parsed: Target) -> CheckContext:
        module = import_target_module(parsed)
        register_user_module(self._manager, module)
        assert parsed.object_name is not None
        where = parsed.module_name or str(parsed.path)
        models = self._hook_candidates() or [
            named_candidate(vars(module), parsed.object_name, where)]
        return _context(self.target, self.options, self._setup(), None, models)

    def _hook_candidates(self) -> list[ModelCandidate]:
        return hook_candidates(self._manager.hook)

    def _setup(self) -> TrainingSetup:
        return user_training_setup(self._manager.hook, self.options)


def explain_crash(manager: Any, checks: Sequence[Check], run: ScriptRun) -> list[Finding]:
    """The one explanation of the exception that ended the script: each check is asked
    through the ``torchdoctor_explain_crash`` hook (first answer wins, in run order)."""
    if run.error is None:
        return []
    for check in reversed(checks):  # pluggy calls the last registered first
        manager.register(check, name=f"check:{check.id}")
    try:
        found = manager.hook.torchdoctor_explain_crash(error=run.error, run=run)
    finally:
        for check in checks:
            manager.unregister(check)
    return [found] if found is not None else []


def missing_package(run: ScriptRun) -> str | None:
    """The package a script could not import before it did anything (the one failure
    that means the file cannot run here at all), or None."""
    error = run.error
    if error is None or not error.before_training or error.type_name != "ModuleNotFoundError":
        return None
    named = re.search(r"No module named '([^']+)'", error.message)
    return named.group(1) if named else error.message

def _context(target: str, options: CheckOptions, setup: TrainingSetup,
             run: ScriptRun | None, models: list[ModelCandidate],
             crash_explanations: list[Finding] | None = None) -> CheckContext:
    """The context, each model given its own setup (the user's batch, the reference or a
    synthetic one: :func:`torchdoctor.synth.choose_setup`); models with none are left
    out of model mode, and the reason kept to say why checks were skipped."""
    from torchdoctor.synth import choose_setup
    from torchdoctor.synth.resolve import BATCH_HOOK, Choice

    usable, reasons = [], []
    for candidate in models:
        hooks = any(setup.user_gave(what) for what in ("batch", "loss", "optimizer"))
        own = script_setup(run, candidate, options) if run is not None and not hooks \
            else None
        if own is not None and own.setup is not None:
            candidate.setup = own.setup
            usable.append(candidate)
            continue
        candidate.setup_note = own.reason if own is not None else ""
        choice = choose_setup(candidate, setup, options)
        if choice.setup is not None and choice.setup is not setup and run is not None \
                and run.forwards:
            # The script already ran its models on its own data. A task we guessed for
            # them proves little and could accuse a healthy model (a value head, a
            # contrastive loss), so model mode keeps to the reference and the user's hooks.
            why = f" ({candidate.setup_note})" if candidate.setup_note else ""
            choice = Choice(None, f"{candidate.name}: the script trains it on its own data "
                                  f"and model mode cannot reuse that setup{why}; a guessed "
                                  f"task could accuse a healthy model ({BATCH_HOOK} to "
                                  "check copies too)")
        if choice.setup is None:
            reasons.append(choice.reason)
        else:
            candidate.setup = choice.setup
            usable.append(candidate)
    return CheckContext(target, options, setup, run, usable,
                        crash_explanations=crash_explanations or [],
                        model_skip="; ".join(reasons), found_models=list(models))


#: said once in the report (not on stderr) when model mode trained on the stand-in
SYNTHETIC_REFERENCE_NOTE = ("model mode trained copies on the synthetic FashionMNIST "
                            "stand-in (no real data found): pass --data DIR, a folder "
                            "holding FashionMNIST/raw, to use real images")


def _trains_on_synthetic_reference(ctx: CheckContext) -> bool:
    """Whether model mode trains some model on the synthetic FashionMNIST stand-in."""
    from torchdoctor.reference.data import SYNTHETIC

    setups = [c.setup or ctx.setup for c in ctx.models]
    return any(setup is not None and setup.data == SYNTHETIC for setup in setups)


def _mode_name(ctx: CheckContext) -> str:
    return "+".join(m for m in ("script", "model") if m in ctx.modes) or "none"


def _data_name(ctx: CheckContext) -> str:
    """What model mode trained on: one description, or one per model when they differ."""
    if ctx.setup is None or not ctx.models:
        return "none"
    named = {c.name: ctx.training_setup(c).data for c in ctx.models}
    if len(set(named.values())) == 1:
        return next(iter(named.values()))
    return "; ".join(f"{name}: {data}" for name, data in named.items())


def _setup_names(ctx: CheckContext) -> dict[str, str]:
    """Per model trained in model mode, the setup its copies were trained with."""
    return {c.name: describe_setup(ctx.training_setup(c), c.setup_note) for c in ctx.models}


def _run_findings(run: ScriptRun | None, findings: list[Finding]) -> list[Finding]:
    """Findings about the script run itself (check id ``target``)."""
    if run is None:
        return []
    found = []
    if asked_for_missing_cuda(run.error) and not any(f.explains_crash for f in findings):
        assert run.error is not None
        found.append(no_gpu_finding(run.error, run.path))
    elif run.error is not None and not any(f.explains_crash for f in findings):
        found.append(crash_finding(run))
    if run.status is RunStatus.TIMEOUT:
        found.append(Finding(TARGET_CHECK_ID, Severity.WARNING,
                             "the script did not finish within --timeout; checks saw only "
                             "what ran before", run.path,
                             "raise --timeout, or lower --limit-batches/--max-steps"))
    if run.status is RunStatus.EXITED:
        found.append(Finding(TARGET_CHECK_ID, Severity.WARNING, "; ".join(run.notes),
                             run.path, ""))
    return found


def diagnose(target: str, options: CheckOptions | None = None, *,
             select: Sequence[str] | None = None,
             ignore: Sequence[str] | None = None) -> Report:
    """Diagnose a TARGET (``file.py``, ``file.py::name`` or ``package.module:name``)
    and return the report. Raises TargetError/UsageError for a bad target or ids."""
    with Diagnosis(target, options, select=select, ignore=ignore) as diagnosis:
        return diagnosis.report()


def diagnose_model(model: Any, *, batch: tuple[Any, Any] | None = None,
                   loss_fn: Callable[..., Any] | None = None,
                   optimizer_factory: Callable[[Iterable[Any]], Any] | None = None,
                   options: CheckOptions | None = None,
                   select: Sequence[str] | None = None, ignore: Sequence[str] | None = None,
                   name: str = "model") -> Report:
    """Run the model-mode checks on copies of ``model`` (it is not modified). ``batch``,
    ``loss_fn`` and ``optimizer_factory`` replace the reference ones."""
    options = options or CheckOptions()
    started = time.perf_counter()
    with preserved_state(options.seed):
        candidate = ModelCandidate.from_instance(name, "the model given", model)
        setup = training_setup(options, batch=None if batch is None else (lambda: batch))
    if loss_fn is not None:
        setup.make_loss = lambda: loss_fn
        setup.source["loss"] = "loss_fn given"
    if optimizer_factory is not None:
        setup.make_optimizer = optimizer_factory
        setup.source["optimizer"] = "optimizer_factory given"
    with preserved_state(options.seed):
        ctx = _context(name, options, setup, None, [candidate])
    classes, problems = collect_checks(make_plugin_manager().manager)
    results = [run_one_check(cls(), ctx) for cls in select_checks(classes, select, ignore)]
    return Report(target=name, mode="model", data=_data_name(ctx), setups=_setup_names(ctx),
                  device=options.device,
                  seconds=time.perf_counter() - started, checks=results, notes=problems)

