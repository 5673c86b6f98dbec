"""The plugin's command-line options, each mirrored by an ini setting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from torchdoctor.engine.context import (
    DEFAULT_LIMIT_BATCHES,
    DEFAULT_MAX_STEPS,
    DEFAULT_SEED,
    DEFAULT_TIMEOUT,
)


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

#: flags that may be given several times (their values are appended)
_REPEATED = {"--torchdoctor", "--torchdoctor-select", "--torchdoctor-ignore"}


def add_options(parser: pytest.Parser) -> None:
    """Options in their own group, each with an ini setting of the same meaning (the
    option's ``dest`` is the ini key, so settings read both by one name)."""
    group = parser.getgroup("torchdoctor", "torchdoctor: why a PyTorch model does not train")
    for option in _OPTIONS:
        action = "append" if option.flag in _REPEATED else "store"
        group.addoption(option.flag, action=action, dest=option.ini, default=None,
                        metavar=option.metavar, help=option.help)
        default: Any = [] if option.ini_type == "linelist" else ""
        parser.addini(option.ini, f"{option.help} (as {option.flag})",
                      type=option.ini_type, default=default)  # type: ignore[arg-type]
