"""The ``torchdoctor`` command: an argparse front; each subcommand is a small function
returning an exit code (see :class:`~torchdoctor.findings.ExitCode`).

torch is imported only by the subcommands that need it, so ``--help`` and
``list-checks`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from torchdoctor.errors import UsageError
from torchdoctor.findings import ExitCode, Report

EPILOG = """exit codes: 0 no error finding; 1 an error finding; 2 a bad target or usage;
3 the doctor itself failed (a check crashed and nothing else was wrong)."""


def _id_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {number}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from torchdoctor import __version__

    parser = argparse.ArgumentParser(
        prog="torchdoctor", epilog=EPILOG,
        description="Finds out why a PyTorch model does not train, and says how to fix it.")
    parser.add_argument("--version", action="version", version=f"torchdoctor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_check(commands)
    _add_reference(commands)
    _add_profile(commands)
    commands.add_parser("list-checks", help="list the checks (built-in and plugins)",
                        description="List every check with its id and what it looks for.")
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="device for model checks (cpu, cuda, "
                        "cuda:1, mps; default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every check (default 0)")
    parser.add_argument("--limit-batches", type=_positive_int, default=4, metavar="N",
                        help="batches per DataLoader pass in a script run (default 4)")
    parser.add_argument("--timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                        help="time limit for running the script (default 60)")
    parser.add_argument("--data", metavar="DIR", help="FashionMNIST root (default "
                        "$TORCHDOCTOR_DATA, else ./data; synthetic data when absent)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress, no notices")


def _add_check(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="diagnose a model file or training script",
        description="Run TARGET through the troubleshooting checks.\n\nTARGET is file.py "
        "(run as a program in a fast-dev-run regime, and its models checked), file.py::name "
        "(a model instance, class or factory in the file) or package.module:name.")
    check.add_argument("targets", nargs="+", metavar="TARGET")
    check.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    check.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE")
    check.add_argument("--select", type=_id_list, action="extend", metavar="IDS",
                       help="only these check ids (comma-separated, repeatable)")
    check.add_argument("--ignore", type=_id_list, action="extend", metavar="IDS",
                       help="skip these check ids (comma-separated, repeatable)")
    check.add_argument("--max-steps", type=_positive_int, default=20, metavar="N",
                       help="optimizer steps applied in a script run (default 20)")
    check.add_argument("--trace-steps", type=_non_negative_int, default=3, metavar="N",
                       help="optimizer steps of a script run traced op by op for the numerics "
                       "and broadcasting rules (default 3; 0: off)")
    check.add_argument("--script-args", type=shlex.split, default=[], metavar="'ARGS'",
                       help="command-line arguments for a file target, as one quoted string "
                       "(its sys.argv[1:]), e.g. --script-args '--epochs 3 --data ./data'")
    check.add_argument("--verbose", "-v", action="store_true",
                       help="tracebacks, crashed checks in full, the script's output")
    _add_run_options(check)


def _add_reference(commands: argparse._SubParsersAction) -> None:
    ref = commands.add_parser("reference", help="train the bundled FashionMNIST reference",
                              description="Train the reference FashionMNIST classifier with "
                              "its healthy protocol and print a per-epoch table.")
    ref.add_argument("--epochs", type=_positive_int, default=1)
    ref.add_argument("--data", metavar="DIR")
    ref.add_argument("--batch-size", type=_positive_int, default=64)
    ref.add_argument("--lr", type=_positive_float, default=1e-3)
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--device", default="cpu")
    ref.add_argument("--limit-batches", type=_positive_int, default=None, metavar="N")
    ref.add_argument("--checkpoint", metavar="FILE", help="save the state_dict here")
    ref.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    ref.add_argument("--quiet", "-q", action="store_true")


def _add_profile(commands: argparse._SubParsersAction) -> None:
    prof = commands.add_parser("profile", help="where the time of a training loop goes",
                               description="Profile a few steps of TARGET (a training script) "
                               "or of the reference trainer (no TARGET): data loading vs "
                               "forward/backward/step, top operators, peak memory, advice.")
    prof.add_argument("target", nargs="?", metavar="TARGET")
    prof.add_argument("--steps", type=_positive_int, default=20)
    prof.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    prof.add_argument("--trace", metavar="FILE", help="also write a Chrome trace")
    prof.add_argument("--num-workers", type=int, default=0)
    _add_run_options(prof)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "check": cmd_check, "reference": cmd_reference, "profile": cmd_profile,
        "list-checks": cmd_list_checks,
    }
    if args.command is None:
        parser.print_help()
        return int(ExitCode.USAGE)
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        if getattr(args, "verbose", False):
            raise
        print(f"torchdoctor: error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        print("torchdoctor: interrupted", file=sys.stderr)
        return 130


def cmd_list_checks(args: argparse.Namespace) -> int:
    """``torchdoctor list-checks``: ids and summaries, without importing torch."""
    from torchdoctor.plugins import collect_checks, make_plugin_manager
    from torchdoctor.report import table

    load = make_plugin_manager()
    classes, problems = collect_checks(load.manager)
    rows = [[cls.id, ", ".join(sorted(cls.modes)), cls.summary] for cls in classes]
    print(table(rows, ["id", "modes", "what it finds"]))
    for problem in load.problems + problems:
        print(f"warning: {problem}", file=sys.stderr)
    return int(ExitCode.OK)


def cmd_check(args: argparse.Namespace) -> int:
    """``torchdoctor check TARGET...``."""
    from torchdoctor.cli.progress import Progress
    from torchdoctor.engine.context import CheckOptions

    options = CheckOptions(device=_checked_device(args.device), seed=args.seed,
                           limit_batches=args.limit_batches, max_steps=args.max_steps,
                           timeout=args.timeout, data_root=args.data, verbose=args.verbose,
                           script_args=tuple(args.script_args), trace_steps=args.trace_steps)
    if args.data:
        os.environ["TORCHDOCTOR_DATA"] = args.data  # so the user's script finds it too
    progress = Progress(enabled=not args.quiet and sys.stderr.isatty())
    reports: list[Report] = []
    bad_target = False
    for target in args.targets:
        report = _check_one(target, options, args, progress)
        if report is None:
            bad_target = True
        else:
            reports.append(report)
    if reports:
        _emit(reports, args)
    if bad_target:
        return int(ExitCode.USAGE)
    return int(max((r.exit_code for r in reports), default=ExitCode.OK))


def _check_one(target: str, options: object, args: argparse.Namespace,
               progress: object) -> Report | None:
    """Diagnose one target; a bad target prints one message and gives None."""
    from torchdoctor.engine.runner import Diagnosis
    from torchdoctor.errors import TargetError

    try:
        with Diagnosis(target, options, select=args.select,  # type: ignore[arg-type]
                       ignore=args.ignore) as diagnosis:
            progress.start(target, diagnosis.check_ids)  # type: ignore[attr-defined]
            diagnosis.context()
            for check_id in diagnosis.check_ids:
                progress.step(check_id)  # type: ignore[attr-defined]
                diagnosis.run_check(check_id)
            progress.done()  # type: ignore[attr-defined]
            return diagnosis.report()
    except TargetError as exc:
        progress.done()  # type: ignore[attr-defined]
        if args.verbose:
            raise
        print(f"torchdoctor: {target}: {exc}", file=sys.stderr)
        return None


def _emit(reports: list[Report], args: argparse.Namespace) -> None:
    from torchdoctor.report import render

    text = render(reports, args.format)
    if args.verbose:
        text += _verbose_details(reports)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        if not args.quiet:
            print(f"torchdoctor: report written to {args.output}", file=sys.stderr)
    else:
        print(text)


def _verbose_details(reports: list[Report]) -> str:
    from torchdoctor.findings import Outcome

    parts = [f"\n--- {r.target}: {c.id} crashed ---\n{c.detail}" for r in reports
             for c in r.checks if c.outcome is Outcome.CRASHED]
    return "".join(parts)


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


def cmd_reference(args: argparse.Namespace) -> int:
    """``torchdoctor reference``: train the bundled FashionMNIST reference."""
    from torchdoctor.cli.reference import run_reference_cli

    return run_reference_cli(epochs=args.epochs, data=args.data, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, device=args.device, quiet=args.quiet,
                             fmt=args.format, limit_batches=args.limit_batches,
                             checkpoint=args.checkpoint)


def cmd_profile(args: argparse.Namespace) -> int:
    """``torchdoctor profile [TARGET]``."""
    from torchdoctor.profiling import run_profile_cli

    return run_profile_cli(args.target, steps=args.steps, data=args.data, device=args.device,
                           seed=args.seed, fmt=args.format, trace=args.trace, quiet=args.quiet,
                           timeout=args.timeout, limit_batches=args.limit_batches,
                           num_workers=args.num_workers)


if __name__ == "__main__":
    raise SystemExit(main())
