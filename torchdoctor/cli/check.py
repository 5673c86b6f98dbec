"""``torchdoctor check TARGET...``: validate the targets (before torch is imported, so a
typo answers at once), diagnose each, print the report in the chosen format."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchdoctor.cli.output import use_color, write
from torchdoctor.errors import UsageError
from torchdoctor.findings import TARGET_CHECK_ID, ExitCode, Finding, Report, Severity

if TYPE_CHECKING:
    from torchdoctor.cli.progress import Progress
    from torchdoctor.cli.stdin import ScriptStdin
    from torchdoctor.engine.context import CheckOptions
    from torchdoctor.engine.runner import Diagnosis
    from torchdoctor.report import TargetFailure


@dataclass
class Gathered:
    """What the command gathered: reports, bad targets, --verbose text for stderr."""

    reports: list[Report] = field(default_factory=list)
    failures: list[TargetFailure] = field(default_factory=list)
    verbose: list[str] = field(default_factory=list)


def target_problem(spec: str) -> str | None:
    """What is wrong with a TARGET that can be told without importing torch, or None."""
    from torchdoctor.engine.target import parse_target
    from torchdoctor.errors import TargetError

    path = Path(spec.partition("::")[0])
    if spec.partition("::")[0] and path.is_dir():
        scripts = sorted(p.name for p in path.glob("*.py"))[:3]
        example = f" (here: {', '.join(scripts)})" if scripts else ""
        return (f"is a directory; give a Python file{example}, file.py::name or "
                "package.module:name")
    try:
        parsed = parse_target(spec)
    except TargetError as exc:
        return str(exc).removeprefix(f"{spec}: ")
    if parsed.path is not None and not parsed.path.is_file():
        return "no such file. Give the path of a Python file, e.g. torchdoctor check train.py"
    return None


def cmd_check(args: argparse.Namespace) -> int:
    """``torchdoctor check TARGET...``: the exit code of the worst target (2 for a bad
    one)."""
    from torchdoctor.report import TargetFailure

    outcome = Gathered()
    good = []
    for target in args.targets:
        problem = target_problem(target)
        if problem is None:
            good.append(target)
        else:
            outcome.failures.append(TargetFailure(target, problem))
    if good:
        _diagnose_all(good, args, outcome)
    _emit(outcome, args)
    if outcome.failures:
        return int(ExitCode.USAGE)
    return int(max((r.exit_code for r in outcome.reports), default=ExitCode.OK))


def _diagnose_all(targets: list[str], args: argparse.Namespace, outcome: Gathered) -> None:
    from torchdoctor.cli.progress import Progress
    from torchdoctor.cli.stdin import stdin_content
    from torchdoctor.engine.runoptions import check_options

    options = check_options(vars(args), device=_checked_device(args.device),
                            verbose=args.verbose)
    if args.data_root:
        os.environ["TORCHDOCTOR_DATA"] = args.data_root  # so the user's script finds it too
    progress = Progress(enabled=not args.quiet and sys.stderr.isatty())
    given = stdin_content(args.stdin)  # read once: every target gets the same
    for target in targets:
        _check_one(target, options, args, progress, outcome, given)


def _check_one(target: str, options: CheckOptions, args: argparse.Namespace,
               progress: Progress, outcome: Gathered, given: str) -> None:
    """Diagnose one target into ``outcome``: its report, or its failure."""
    from torchdoctor.cli.stdin import script_stdin
    from torchdoctor.engine.runner import Diagnosis
    from torchdoctor.errors import TargetError
    from torchdoctor.report import TargetFailure

    diagnosis = Diagnosis(target, options, select=args.select, ignore=args.ignore)
    with script_stdin(given, args.stdin) as stdin, diagnosis:
        try:
            progress.start(target, diagnosis.check_ids)
            diagnosis.context()
            for check_id in diagnosis.check_ids:
                progress.step(check_id)
                diagnosis.run_check(check_id)
            report = diagnosis.report()
        except TargetError as exc:
            outcome.failures.append(TargetFailure(target, _failure_message(exc, stdin)))
            return
        finally:
            progress.done()
            if args.verbose:
                outcome.verbose.extend(_script_details(target, diagnosis))
    if stdin.ran_dry:
        _replace_eof_crash(report, diagnosis)
        report.run_findings.append(_stdin_finding(stdin, target))
    outcome.reports.append(report)
    if args.verbose:
        outcome.verbose.extend(_crash_details(report))


def _replace_eof_crash(report: Report, diagnosis: Diagnosis) -> None:
    """The EOFError a script died of is our doing (its stdin is empty): the run's
    'the script raised' finding gives way to the input warning."""
    script = diagnosis.script_result
    error = script.run.error if script is not None else None
    if error is None or error.type_name != "EOFError":
        return
    where = str(error.location or script.run.path)
    report.run_findings[:] = [f for f in report.run_findings if not (
        f.check == TARGET_CHECK_ID and f.severity is Severity.ERROR and f.location == where)]


def _failure_message(exc: Exception, stdin: ScriptStdin) -> str:
    """The TargetError's message; when the script stopped because it wanted input, that
    first (the EOFError is only its consequence)."""
    if not stdin.ran_dry:
        return str(exc)
    if "EOFError" in str(exc):
        return f"{stdin.message()}. Fix: {stdin.hint()}"
    return f"{exc} (also: {stdin.message()}. Fix: {stdin.hint()})"


def _stdin_finding(stdin: ScriptStdin, target: str) -> Finding:
    return Finding(TARGET_CHECK_ID, Severity.WARNING, stdin.message(where=False),
                   stdin.read_at or target.partition("::")[0], stdin.hint())


def _script_details(target: str, diagnosis: Diagnosis) -> list[str]:
    """--verbose: what the script printed, and its traceback with only the user's
    frames (torchdoctor's and torch's own are left out)."""
    script = diagnosis.script_result
    if script is None:
        return []
    parts = [f"--- {target}: the script's output (stdout and stderr, last "
             f"{len(script.output)} characters) ---\n{script.output.rstrip() or '(nothing)'}"]
    error = script.run.error
    if error is not None:
        parts.append(f"--- {target}: the script's traceback (your frames) ---\n"
                     f"Traceback (most recent call last):\n{error.traceback_text.rstrip()}")
    return parts


def _crash_details(report: Report) -> list[str]:
    return [f"--- {report.target}: {c.id} crashed (a torchdoctor bug) ---\n{c.detail.rstrip()}"
            for c in report.crashed]


def _emit(outcome: Gathered, args: argparse.Namespace) -> None:
    from torchdoctor.report import render, terminal_width

    to_file = bool(args.output)
    text = render(outcome.reports, args.format, failures=outcome.failures,
                  width=terminal_width(), color=not to_file and use_color(sys.stdout),
                  rules=_rules(args.format))
    for part in outcome.verbose:
        print(part, file=sys.stderr)
    if args.format in ("table", "markdown"):
        _explain_failures_on_stderr(outcome, args)
    if to_file:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        if not args.quiet:
            print(f"torchdoctor: report written to {args.output}", file=sys.stderr)
    elif outcome.reports or args.format not in ("table", "markdown"):
        write(text)


def _explain_failures_on_stderr(outcome: Gathered, args: argparse.Namespace) -> None:
    """In the human formats a bad target is a message on stderr (stdout keeps reports)."""
    for failure in outcome.failures:
        print(f"torchdoctor: {failure.target}: {failure.message}", file=sys.stderr)


def _rules(fmt: str) -> dict[str, str] | None:
    """Check id -> summary, for SARIF's rule list."""
    if fmt != "sarif":
        return None
    from torchdoctor.plugins import collect_checks, make_plugin_manager

    classes, _ = collect_checks(make_plugin_manager().manager)
    return {str(c.id): str(c.summary) for c in classes}


def _checked_device(device: str) -> str:
    """Validate --device early: a clear usage error instead of a crash in every check."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r} is not a device: {exc}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if parsed.type == "cuda" and parsed.index is not None \
            and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine")
    return device


def register(commands: Any, epilog: str) -> None:
    """Add the ``check`` subcommand."""
    from torchdoctor.engine.runoptions import add_run_options
    from torchdoctor.report import CHECK_FORMATS

    check = commands.add_parser(
        "check", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="diagnose a model file or training script",
        description="Run TARGET through the troubleshooting checks.\n\nTARGET is file.py "
        "(run as a program in a fast-dev-run regime, and its models checked), file.py::name "
        "(a model instance, class or factory in the file) or package.module:name.")
    check.add_argument("targets", nargs="+", metavar="TARGET")
    check.add_argument("--format", choices=CHECK_FORMATS, default="table",
                       help="table (fits the terminal), markdown, json, sarif (SARIF 2.1.0 "
                       "for code scanning) or github (Actions annotations); default table")
    check.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE")
    check.add_argument("--select", type=_id_list, action="extend", metavar="IDS",
                       help="only these check ids (comma-separated, repeatable)")
    check.add_argument("--ignore", type=_id_list, action="extend", metavar="IDS",
                       help="skip these check ids (comma-separated, repeatable)")
    check.add_argument("--stdin", metavar="FILE", help="what the script reads from "
                       "standard input (input() answers); '-' passes torchdoctor's own. "
                       "Default: nothing, so input() gets end-of-file at once")
    check.add_argument("--verbose", "-v", action="store_true",
                       help="on stderr: the script's own output, its traceback (your "
                       "frames), crashed checks in full")
    check.add_argument("--quiet", "-q", action="store_true",
                       help="no progress line, no 'report written' line")
    add_run_options(check)


def _id_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]
