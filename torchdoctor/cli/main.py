"""The ``torchdoctor`` command: an argparse front; each subcommand is a small function
returning an exit code (see :class:`~torchdoctor.findings.ExitCode`).

torch is imported only by the subcommands that need it, so ``--help`` and
``list-checks`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from torchdoctor.cli import check
from torchdoctor.cli.output import silence_stdout, write
from torchdoctor.engine.runoptions import argparse_type, positive_float, positive_int
from torchdoctor.errors import UsageError
from torchdoctor.findings import ExitCode

PROFILE_EPILOG = """exit codes: 0 profiled; 1 the script crashed, timed out or exited with an
error (the part that ran is shown); 2 a bad target or option; 130 interrupted (Ctrl-C).
A closed pipe (| head) ends the output quietly."""

#: exit code after Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED = 130
#: exit code when stdout was closed before everything was written (128 + SIGPIPE), for
#: ``reference``; ``check``, ``profile`` and ``list-checks`` write their output last, in
#: one piece, and keep their own exit code
PIPE_CLOSED = 141

EPILOG = """exit codes: 0 no error finding; 1 an error finding; 2 a bad target or usage;
3 the doctor itself failed (a check crashed and nothing else was wrong);
130 interrupted (Ctrl-C). A closed pipe (| head) ends the output quietly."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from torchdoctor import __version__

    parser = argparse.ArgumentParser(
        prog="torchdoctor", epilog=EPILOG,
        description="Finds out why a PyTorch model does not train, and says how to fix it.")
    parser.add_argument("--version", action="version", version=f"torchdoctor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check.register(commands, EPILOG)
    _add_reference(commands)
    _add_profile(commands)
    commands.add_parser("list-checks", help="list the checks (built-in and plugins)",
                        description="List every check with its id and what it looks for.")
    return parser


def _add_reference(commands: argparse._SubParsersAction) -> None:
    ref = commands.add_parser("reference", help="train the bundled FashionMNIST reference",
                              description="Train the reference FashionMNIST classifier with "
                              "its healthy protocol and print a per-epoch table.")
    ref.add_argument("--epochs", type=argparse_type(positive_int, "N"), default=1)
    ref.add_argument("--data", metavar="DIR")
    ref.add_argument("--batch-size", type=argparse_type(positive_int, "N"), default=64)
    ref.add_argument("--lr", type=argparse_type(positive_float, "number"), default=1e-3)
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--device", default="cpu")
    ref.add_argument("--limit-batches", type=argparse_type(positive_int, "N"), default=None,
                     metavar="N")
    ref.add_argument("--checkpoint", metavar="FILE", help="save the state_dict here")
    ref.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    ref.add_argument("--quiet", "-q", action="store_true")


def _add_profile(commands: argparse._SubParsersAction) -> None:
    from torchdoctor.engine.runoptions import add_run_options
    from torchdoctor.report import FORMATS

    prof = commands.add_parser("profile", help="where the time of a training loop goes",
                               epilog=PROFILE_EPILOG,
                               description="Profile a few steps of TARGET (a training script) "
                               "or of the reference trainer (no TARGET): data loading vs "
                               "forward/backward/step, top operators, peak memory, advice.")
    prof.add_argument("target", nargs="?", metavar="TARGET")
    prof.add_argument("--format", choices=FORMATS, default="table")
    prof.add_argument("--trace", metavar="FILE", help="also write a Chrome trace")
    prof.add_argument("--num-workers", type=int, default=0, metavar="N",
                      help="DataLoader workers of the reference trainer (default 0)")
    prof.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    add_run_options(prof, overrides={
        "max_steps": {"flags": ("--steps", "--max-steps"),
                      "help": "training steps (optimizer steps) to profile; the run stops "
                              "after them (default 20)"},
        "device": {"help": "device profiled: cpu, cuda, cuda:1 (default cpu)"},
        "seed": {"help": "seed of the run (default 0)"}},
        # op-by-op tracing, and an emulated GPU's bookkeeping, would be profiled too:
        # profile runs the script without them
        leave_out=frozenset({"trace_steps", "gpu_emulation"}))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "check": check.cmd_check, "reference": cmd_reference, "profile": cmd_profile,
        "list-checks": cmd_list_checks,
    }
    if args.command is None:
        parser.print_help()
        return int(ExitCode.USAGE)
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"torchdoctor: error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        print("torchdoctor: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        silence_stdout()
        return PIPE_CLOSED


def cmd_list_checks(args: argparse.Namespace) -> int:
    """``torchdoctor list-checks``: ids and summaries, without importing torch."""
    from torchdoctor.plugins import collect_checks, make_plugin_manager
    from torchdoctor.report import fitted_table

    load = make_plugin_manager()
    classes, problems = collect_checks(load.manager)
    rows = [[cls.id, ", ".join(sorted(cls.modes)), cls.summary] for cls in classes]
    write(fitted_table(rows, ["id", "modes", "what it finds"]))
    for problem in load.problems + problems:
        print(f"warning: {problem}", file=sys.stderr)
    return int(ExitCode.OK)


def cmd_reference(args: argparse.Namespace) -> int:
    """``torchdoctor reference``: train the bundled FashionMNIST reference."""
    from torchdoctor.cli.reference import run_reference_cli

    return run_reference_cli(epochs=args.epochs, data=args.data, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, device=args.device, quiet=args.quiet,
                             fmt=args.format, limit_batches=args.limit_batches,
                             checkpoint=args.checkpoint)


def cmd_profile(args: argparse.Namespace) -> int:
    """``torchdoctor profile [TARGET]``."""
    from torchdoctor.cli.stdin import script_stdin
    from torchdoctor.profiling import run_profile_cli

    with script_stdin():  # a profiled script does not read the terminal either
        return run_profile_cli(args.target, steps=args.max_steps, data=args.data_root,
                               device=args.device, seed=args.seed, fmt=args.format,
                               trace=args.trace, quiet=args.quiet, timeout=args.timeout,
                               limit_batches=args.limit_batches,
                               num_workers=args.num_workers, script_args=args.script_args)


if __name__ == "__main__":
    raise SystemExit(main())
