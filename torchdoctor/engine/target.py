"""Resolving a TARGET: which file or module, which object, which models.

TARGET forms:

* ``file.py`` - the file is run as a program (script mode) and the models it builds,
  or that it defines, are checked too (model mode);
* ``file.py::name`` - the file is imported (not as ``__main__``, so its training does
  not run) and ``name`` is the model: an ``nn.Module`` instance, a class constructible
  without arguments, or a factory function returning a module;
* ``package.module:name`` - the same, for an importable module.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchdoctor.engine.context import ModelCandidate
from torchdoctor.errors import TargetError

_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_HOOK_ADVICE = ("define a torchdoctor_model() function in the file that returns the model "
                "(see README: hook functions)")


@dataclass(frozen=True)
class Target:
    """A parsed TARGET string."""

    spec: str
    path: Path | None = None
    module_name: str | None = None
    object_name: str | None = None

    @property
    def runs_as_script(self) -> bool:
        """Only a bare ``file.py`` is run as a program."""
        return self.path is not None and self.object_name is None


def parse_target(spec: str) -> Target:
    """Parse ``file.py``, ``file.py::name`` or ``package.module:name``."""
    if "::" in spec:
        file_part, _, name = spec.partition("::")
        if not name.isidentifier():
            raise TargetError(f"{spec}: {name!r} is not a Python name; use file.py::name")
        return Target(spec, path=Path(file_part), object_name=name)
    if spec.endswith(".py") or Path(spec).suffix == ".py":
        return Target(spec, path=Path(spec))
    if _MODULE_SPEC.match(spec):
        module_name, _, name = spec.partition(":")
        return Target(spec, module_name=module_name, object_name=name)
    raise TargetError(f"{spec}: not a target. Use file.py, file.py::name or "
                      "package.module:name")


def import_target_module(target: Target) -> types.ModuleType:
    """Import the module of a ``file.py::name`` or ``package.module:name`` target
    (without running it as ``__main__``)."""
    if target.module_name is not None:
        return _import_module(target.module_name)
    assert target.path is not None
    return _import_file(target.path)


def _import_module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise TargetError(f"cannot import {name}: {exc}. Is it installed, or run from the "
                          "directory that contains it?") from None
    except Exception as exc:  # the user's module raised on import: a bad target
        raise TargetError(f"importing {name} raised {type(exc).__name__}: {exc}") from None


def _import_file(path: Path) -> types.ModuleType:
    from torchdoctor.scriptrun.script import compile_file

    code = compile_file(path.resolve())
    module = types.ModuleType(f"torchdoctor_target_{path.stem}")
    module.__file__ = str(path.resolve())
    sys.path.insert(0, str(path.resolve().parent))
    try:
        exec(code, module.__dict__)
    except Exception as exc:  # the user's file raised on import: a bad target
        raise TargetError(f"{path}: importing the file raised {type(exc).__name__}: {exc}. "
                          "It must import without errors.") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def named_candidate(namespace: dict[str, Any], name: str, where: str) -> ModelCandidate:
    """The model named ``name``: an instance, a no-argument class or a factory."""
    if name not in namespace:
        raise TargetError(f"{where} has no name {name!r}")
    return _candidate_from_object(name, namespace[name], where)


def _candidate_from_object(name: str, obj: Any, where: str) -> ModelCandidate:
    from torch import nn

    if isinstance(obj, nn.Module):
        return ModelCandidate.from_instance(name, f"{where}::{name}", obj)
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        _require_no_arguments(obj, where)
        return ModelCandidate(name, f"{name}() from {where}", obj)
    if callable(obj):
        return ModelCandidate(name, f"{name}() from {where}", _checked_factory(name, obj))
    raise TargetError(f"{where}::{name} is a {type(obj).__name__}, not a model, a model "
                      "class or a function returning a model")


def _checked_factory(name: str, factory: Any) -> Any:
    from torch import nn

    def build() -> nn.Module:
        try:
            model = factory()
        except TypeError as exc:
            raise TargetError(f"{name}() could not be called without arguments ({exc}); "
                              f"{_HOOK_ADVICE}") from None
        if not isinstance(model, nn.Module):
            raise TargetError(f"{name}() returned {type(model).__name__}, not an nn.Module")
        return model

    return build


def _require_no_arguments(cls: type, where: str) -> None:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    required = [p.name for p in signature.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                       p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise TargetError(f"{cls.__name__} in {where} needs constructor arguments "
                          f"({', '.join(required)}): name a factory function instead "
                          f"({where}::make_model) or {_HOOK_ADVICE}")


def discover_candidates(namespace: dict[str, Any], where: str) -> list[ModelCandidate]:
    """Models defined by a file that the script did not build: one module-level
    instance, else one ``nn.Module`` subclass defined there that takes no arguments.
    Several of either is ambiguous: a TargetError that lists them."""
    from torch import nn

    instances = {k: v for k, v in namespace.items()
                 if isinstance(v, nn.Module) and not k.startswith("_") and not _is_loss(v)
                 and any(True for _ in v.parameters())}
    if instances:
        return [_only(instances, where, "model instances")]
    module_name = namespace.get("__name__")
    classes = {k: v for k, v in namespace.items()
               if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module_name
               and not issubclass(v, nn.modules.loss._Loss)}
    if not classes:
        return []
    name, cls = _only(classes, where, "model classes", as_item=True)
    _require_no_arguments(cls, where)
    return [ModelCandidate(name, f"{name}() from {where}", cls)]


def _only(found: dict[str, Any], where: str, what: str, as_item: bool = False) -> Any:
    if len(found) > 1:
        names = ", ".join(sorted(found))
        first = sorted(found)[0]
        raise TargetError(f"{where} has several {what} ({names}): name the one to check, "
                          f"e.g. {where}::{first}, or {_HOOK_ADVICE}")
    name, obj = next(iter(found.items()))
    if as_item:
        return name, obj
    return ModelCandidate.from_instance(name, f"module-level {name!r} in {where}", obj)


def _is_loss(module: Any) -> bool:
    from torch import nn

    return isinstance(module, nn.modules.loss._Loss)


def script_candidates(snapshots: list[Any], namespace: dict[str, Any], models: list[Any],
                      where: str) -> list[ModelCandidate]:
    """The models the script built, as they were at their first forward. A model of the
    same class and parameter shapes as an earlier one (a checkpoint reloaded into a new
    instance for testing, a copy) is the same architecture: model mode checks it once."""
    candidates = []
    architectures: set[tuple[Any, ...]] = set()
    for index, (built, snapshot) in enumerate(zip(models, snapshots)):
        model = unwrapped(built)
        architecture = (type(model), *((n, tuple(p.shape)) for n, p in
                                       model.named_parameters()))
        if architecture in architectures:
            continue
        architectures.add(architecture)
        name = next((k for k, v in namespace.items() if v is built and not k.startswith("_")),
                    type(model).__name__)
        candidates.append(ModelCandidate.from_instance(
            name, f"{type(model).__name__} built by {where}", unwrapped(snapshot),
            observed=index))
    return candidates


def unwrapped(model: Any) -> Any:
    """The module a ``DataParallel`` / ``DistributedDataParallel`` wrapper runs. Model
    mode trains that on one device: the wrapper's copy still names the GPUs the script
    saw (or emulated), and its scatter needs them."""
    from torch import nn

    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model
