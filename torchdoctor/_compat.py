"""Old import paths of 0.1.0 keep working, with a DeprecationWarning.

0.2.0 grouped the flat modules into subpackages (``engine``, ``scriptrun``, ``monitor``,
``reference``, ``cli``, ``diagnoses``). Users may have imported the old names
(``torchdoctor.data``, ``torchdoctor.runner``, ``torchdoctor.monitors`` ...), so a meta
path finder answers for exactly those names with the module at its new home: one module
object under two names, never a copy whose globals could drift apart.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

#: 0.1.0 module path -> its home since 0.2.0
MOVED_MODULES = {
    "torchdoctor.runner": "torchdoctor.engine.runner",
    "torchdoctor.context": "torchdoctor.engine.context",
    "torchdoctor.target": "torchdoctor.engine.target",
    "torchdoctor.state": "torchdoctor.engine.state",
    "torchdoctor.script": "torchdoctor.scriptrun.script",
    "torchdoctor.instrument": "torchdoctor.scriptrun.instrument",
    "torchdoctor.budget": "torchdoctor.scriptrun.budget",
    "torchdoctor.observations": "torchdoctor.scriptrun.observations",
    "torchdoctor.callsite": "torchdoctor.scriptrun.callsite",
    "torchdoctor.gradcarry": "torchdoctor.diagnoses.gradcarry",
    "torchdoctor.nonfinite_replay": "torchdoctor.diagnoses.nonfinite_replay",
    "torchdoctor.monitors": "torchdoctor.monitor.watch",
    "torchdoctor.monitor_analysis": "torchdoctor.monitor.analysis",
    "torchdoctor.monitor_hooks": "torchdoctor.monitor.hooks",
    "torchdoctor.monitor_modes": "torchdoctor.monitor.modes",
    "torchdoctor.monitor_policy": "torchdoctor.monitor.policy",
    "torchdoctor.monitor_reader": "torchdoctor.monitor.reader",
    "torchdoctor.monitor_replay": "torchdoctor.monitor.replay",
    "torchdoctor.monitor_report": "torchdoctor.monitor.report",
    "torchdoctor.monitor_stats": "torchdoctor.monitor.stats",
    "torchdoctor.data": "torchdoctor.reference.data",
    "torchdoctor.reference_cli": "torchdoctor.cli.reference",
    "torchdoctor.progress": "torchdoctor.cli.progress",
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the already-imported module at its new home."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new_name} in torchdoctor 0.2.0; "
                      f"import {self.new_name} instead (the old path will be removed)",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new name."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Answers only for the names in :data:`MOVED_MODULES`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        new_name = MOVED_MODULES.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new_name))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once per process."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
