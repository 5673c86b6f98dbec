"""The plugin's settings (command line over ini over defaults) and check ids."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.engine.context import (
    DEFAULT_LIMIT_BATCHES,
    DEFAULT_MAX_STEPS,
    DEFAULT_SEED,
    DEFAULT_TIMEOUT,
    CheckOptions,
)


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


def _check_options(config: pytest.Config) -> CheckOptions:
    return CheckOptions(
        device=str(_raw(config, "torchdoctor_device")[0] or "cpu"),
        seed=_number(config, "torchdoctor_seed", int, DEFAULT_SEED),
        limit_batches=_number(config, "torchdoctor_limit_batches", int, DEFAULT_LIMIT_BATCHES),
        max_steps=_number(config, "torchdoctor_max_steps", int, DEFAULT_MAX_STEPS),
        timeout=_number(config, "torchdoctor_timeout", float, DEFAULT_TIMEOUT),
        data_root=str(_raw(config, "torchdoctor_data")[0]) or None,
    )


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
