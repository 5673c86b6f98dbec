"""The run options, in one table: how a target is run (device, seed, budget, time limit,
data, script arguments).

``torchdoctor check``, ``torchdoctor profile`` and the pytest plugin (its
``--torchdoctor-*`` flags and ini settings) all build their options from
:data:`RUN_OPTIONS`, so a flag means the same thing, with the same default and the same
validation, wherever it is given. The defaults are :class:`CheckOptions`' own.

No torch import here: ``--help`` must stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torchdoctor.engine.context import CheckOptions


def positive_int(value: str) -> int:
    """An integer of at least 1 (ValueError otherwise)."""
    number = int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def positive_float(value: str) -> float:
    """A number above 0 (ValueError otherwise)."""
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be positive, got {value}")
    return number


def non_negative_int(value: str) -> int:
    """An integer of at least 0 (ValueError otherwise)."""
    number = int(value)
    if number < 0:
        raise ValueError(f"must be at least 0, got {number}")
    return number


def any_int(value: str) -> int:
    """Any integer (a seed)."""
    return int(value)


def script_args(value: str) -> tuple[str, ...]:
    """``'--epochs 3 --data ./data'`` split as a POSIX shell would."""
    return tuple(shlex.split(value))


def on_off_auto(value: str) -> str:
    """``auto``, ``on`` or ``off`` (ValueError otherwise)."""
    if value not in ("auto", "on", "off"):
        raise ValueError(f"must be auto, on or off, got {value!r}")
    return value


def text(value: str) -> str:
    """A string as given."""
    return value


@dataclass(frozen=True)
class RunOption:
    """One run option: its :class:`CheckOptions` field, its flag, how a value is read."""

    field: str  #: the CheckOptions field
    flag: str  #: the ``torchdoctor check`` flag; the plugin's is ``--torchdoctor-`` + its tail
    parse: Callable[[str], Any]
    metavar: str
    help: str  #: without the default (added where it is shown)

    @property
    def default(self) -> Any:
        """The default, from CheckOptions (its one home)."""
        return next(f.default for f in dataclasses.fields(CheckOptions) if f.name == self.field)

    @property
    def name(self) -> str:
        """The flag without dashes, with underscores: ``limit_batches``, ``data``."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def pytest_flag(self) -> str:
        """The pytest plugin's flag: ``--torchdoctor-limit-batches``."""
        return "--torchdoctor-" + self.flag.lstrip("-")

    @property
    def ini(self) -> str:
        """The pytest ini key: ``torchdoctor_limit_batches``."""
        return "torchdoctor_" + self.name

    def help_with_default(self) -> str:
        """The help text with the default, as --help shows it."""
        default = self.default
        if default in (None, ()):
            return self.help
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{self.help} (default {shown})"

    def read(self, raw: str) -> Any:
        """Parse a value given as text; ValueError with a message naming the flag."""
        try:
            return self.parse(str(raw))
        except ValueError as exc:
            raise ValueError(f"{self.flag} {raw!r}: {_reason(exc, self.parse)}") from None


def _reason(exc: ValueError, parse: Callable[[str], Any]) -> str:
    message = str(exc)
    if message.startswith("must be"):
        return message
    kinds: dict[Callable[[str], Any], str] = {
        positive_int: "an integer", any_int: "an integer", non_negative_int: "an integer",
        positive_float: "a number"}
    kind = kinds.get(parse, "a value")
    return f"expected {kind}"


RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("device", "--device", text, "DEVICE",
              "device the checks train copies on: cpu, cuda, cuda:1, mps"),
    RunOption("seed", "--seed", any_int, "N", "seed of every check and of the reference batch"),
    RunOption("limit_batches", "--limit-batches", positive_int, "N",
              "batches per DataLoader pass in a script run, for the first 2 passes of "
              "each loader (later passes: 1; a pass accumulating gradients gets enough "
              "for 2 optimizer steps)"),
    RunOption("max_steps", "--max-steps", positive_int, "N",
              "optimizer steps applied in a script run; later ones are skipped and the "
              "program runs on to its end (a loop no DataLoader bounds is cut after 2x N "
              "backward passes)"),
    RunOption("trace_steps", "--trace-steps", non_negative_int, "N",
              "optimizer steps of a script run traced op by op for the numerics and "
              "broadcasting rules (0: off)"),
    RunOption("timeout", "--timeout", positive_float, "SECONDS",
              "time limit of the script run"),
    RunOption("gpu_emulation", "--gpu-emulation", on_off_auto, "auto|on|off",
              "script mode: run the script as if a GPU were there and record every "
              "operation that mixes GPU and CPU tensors (auto: when this machine has no "
              "CUDA device)"),
    RunOption("data_root", "--data", text, "DIR",
              "FashionMNIST root (default $TORCHDOCTOR_DATA, else ./data; synthetic data "
              "when absent)"),
    RunOption("script_args", "--script-args", script_args, "'ARGS'",
              "command-line arguments for a file target, as one quoted string (its "
              "sys.argv[1:]), e.g. --script-args '--epochs 3 --data ./data'"),
)


def run_option(field: str) -> RunOption:
    """The option of one CheckOptions field."""
    return next(o for o in RUN_OPTIONS if o.field == field)


def argparse_type(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type``: its ValueError becomes argparse's message
    (``argument --max-steps: must be at least 1, got 0``)."""
    def parse_for_argparse(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(_reason(exc, parse)) from None

    parse_for_argparse.__name__ = name  # argparse names the type in its messages
    return parse_for_argparse


def add_run_options(parser: argparse.ArgumentParser, *,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    leave_out: frozenset[str] = frozenset()) -> None:
    """Add the run options to an argparse parser (``dest`` is the CheckOptions field).
    ``overrides`` maps a field to argparse keywords (``flags``, ``default``, ``help``)
    for a command where an option reads differently (``profile --steps``);
    ``leave_out``: fields a command does not take."""
    for option in RUN_OPTIONS:
        if option.field in leave_out:
            continue
        extra = dict((overrides or {}).get(option.field, {}))
        flags = extra.pop("flags", (option.flag,))
        parser.add_argument(*flags, dest=option.field,
                            type=argparse_type(option.parse, option.name),
                            default=extra.pop("default", option.default),
                            metavar=option.metavar,
                            help=extra.pop("help", option.help_with_default()), **extra)


def check_options(values: Mapping[str, Any], **extra: Any) -> CheckOptions:
    """CheckOptions from parsed values keyed by field (absent or None: the default)."""
    given = {o.field: values[o.field] for o in RUN_OPTIONS if values.get(o.field) is not None}
    return CheckOptions(**{**given, **extra})


__all__ = ["RUN_OPTIONS", "RunOption", "add_run_options", "argparse_type", "check_options",
           "positive_float", "positive_int", "run_option"]
