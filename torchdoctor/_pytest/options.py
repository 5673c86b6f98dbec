"""The plugin's command-line options, each mirrored by an ini setting. The run options
(device, seed, budget, timeout, data, script arguments) come from the table that
``torchdoctor check`` uses too: :data:`torchdoctor.engine.runoptions.RUN_OPTIONS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from torchdoctor.engine.runoptions import RUN_OPTIONS, RunOption


@dataclass(frozen=True)
class _Option:
    """One setting: a command-line flag and the ini key of the same meaning."""

    flag: str
    ini: str
    ini_type: str
    metavar: str
    help: str


def _run_option(option: RunOption) -> _Option:
    """A run option of :data:`RUN_OPTIONS` as a plugin flag and ini key."""
    return _Option(option.pytest_flag, option.ini, "string", option.metavar,
                   option.help_with_default())


_OPTIONS = (
    _Option("--torchdoctor", "torchdoctor_targets", "linelist", "TARGET",
            "diagnose TARGET (file.py, file.py::name or package.module:name): each "
            "check becomes a test item TARGET::torchdoctor::CHECK (repeatable)"),
    _Option("--torchdoctor-select", "torchdoctor_select", "linelist", "IDS",
            "comma-separated check ids to run (default: all)"),
    _Option("--torchdoctor-ignore", "torchdoctor_ignore", "linelist", "IDS",
            "comma-separated check ids to leave out"),
    *(_run_option(option) for option in RUN_OPTIONS),
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
