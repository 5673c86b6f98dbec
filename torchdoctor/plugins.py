"""The one place a plugin manager is made: built-in checks, entry-point checks, and the
user's file as a plugin."""

from __future__ import annotations

import importlib.metadata
import inspect
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from torchdoctor import hookspecs
from torchdoctor.check import Check
from torchdoctor.errors import TargetError

ENTRY_POINT_GROUP = "torchdoctor"


class _DoctorPluginManager(pluggy.PluginManager):
    """Accepts plain ``torchdoctor_*`` functions from the user's file as hook
    implementations, the way pytest accepts them from a conftest.py."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("torchdoctor_") and isinstance(plugin, ModuleType):
            method = getattr(plugin, name, None)
            if inspect.isfunction(method) and method.__module__ == plugin.__name__:
                return {}
        return opts


@dataclass
class PluginLoad:
    """The plugin manager and what went wrong loading third-party plugins."""

    manager: pluggy.PluginManager
    problems: list[str] = field(default_factory=list)


def make_plugin_manager(user_module: ModuleType | None = None,
                        entry_points: bool = True) -> PluginLoad:
    """Build the plugin manager: specs, built-in checks, entry-point plugins (a broken
    one is reported, not fatal) and, if given, the user's file.

    Raises :class:`TargetError` when the user's file defines a ``torchdoctor_*``
    function that is not a known hook (a misspelt name must not be silently ignored).
    """
    manager = _DoctorPluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    from torchdoctor import checks

    manager.register(checks, name="torchdoctor.checks")
    load = PluginLoad(manager)
    if entry_points:
        load.problems.extend(_load_entry_points(manager))
    if user_module is not None:
        register_user_module(manager, user_module)
    return load


def register_user_module(manager: pluggy.PluginManager, module: ModuleType) -> None:
    """Register the user's file as a plugin and reject unknown hook names."""
    manager.register(module, name=f"user:{module.__name__}")
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        manager.unregister(module)
        known = ", ".join(f"{name}()" for name in hookspecs.USER_HOOKS)
        raise TargetError(f"{exc}. The hook functions a file may define are: {known}") from None


def _load_entry_points(manager: pluggy.PluginManager) -> list[str]:
    problems = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if manager.get_plugin(entry.name) is not None:
            continue
        try:
            manager.register(entry.load(), name=entry.name)
        except Exception as exc:  # a broken plugin must not take the doctor down
            problems.append(f"plugin {entry.name!r} ({entry.value}) failed to load: "
                            f"{type(exc).__name__}: {exc}")
    return problems


def collect_checks(manager: pluggy.PluginManager) -> tuple[list[type[Check]], list[str]]:
    """Every check class from every plugin, each plugin called on its own so one
    raising implementation does not hide the others' checks. Returns the classes (in
    registration order, first id wins) and the problems met."""
    classes: list[type[Check]] = []
    seen: set[str] = set()
    problems: list[str] = []
    # pluggy returns implementations last-registered first; built-ins come first here.
    for impl in reversed(manager.hook.torchdoctor_checks.get_hookimpls()):
        try:
            provided: list[type[Check]] = list(impl.function())  # type: ignore[call-overload]
        except Exception as exc:  # a plugin's hook (third-party code): note it, go on
            problems.append(f"plugin {impl.plugin_name!r} raised in torchdoctor_checks: "
                            f"{type(exc).__name__}: {exc}")
            continue
        for cls in provided:
            check_id = getattr(cls, "id", "")
            if not check_id or check_id in seen:
                problems.append(f"plugin {impl.plugin_name!r}: check {cls!r} has an empty "
                                f"or duplicate id {check_id!r}; ignored")
                continue
            seen.add(check_id)
            classes.append(cls)
    return classes, problems
