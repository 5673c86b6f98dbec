"""The plugin's settings (command line over ini over defaults) and check ids."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runoptions import RUN_OPTIONS, RunOption, check_options


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


def ids_or(values: Sequence[str] | str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """The check ids in ``values``, or ``default`` when ``values`` is None (not given)."""
    return default if values is None else split_ids(values)


def _run_value(config: pytest.Config, option: RunOption) -> Any:
    """A run option's value (command line over ini), None when not given; parsed and
    checked as ``torchdoctor check`` does."""
    value, from_cli = _raw(config, option.ini)
    if value in ("", None):
        return None
    try:
        return option.read(str(value))
    except ValueError as exc:
        where = option.pytest_flag if from_cli else f"ini setting {option.ini} ="
        raise pytest.UsageError(f"{where} {value!r}: {str(exc).partition(': ')[2]}") from None


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


def _check_options(config: pytest.Config) -> CheckOptions:
    return check_options({o.field: _run_value(config, o) for o in RUN_OPTIONS})


def read_settings(config: pytest.Config) -> Settings:
    """Settings from the command line and ini file; pytest.UsageError on bad values."""
    options = _check_options(config)
    settings = Settings(_targets(config), split_ids(_raw(config, "torchdoctor_select")[0]),
                        split_ids(_raw(config, "torchdoctor_ignore")[0]), options)
    for check_id in (*settings.select, *settings.ignore):
        _require_known(config, check_id, "--torchdoctor-select/--torchdoctor-ignore")
    return settings


def settings_of(config: pytest.Config) -> Settings:
    """The plugin's settings for this run."""
    return config.stash.get(SETTINGS_KEY, Settings())


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
