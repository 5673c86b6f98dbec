"""Finding device bugs a CPU-only machine hides: tensors and modules a model keeps as
plain attributes (``model.to(device)`` does not move them), and tensors that forward
creates on a fixed device.

The latter needs a GPU to show up for real. Instead, a copy of the model and the batch
go to the ``meta`` device and a torch function mode watches every operation: a tensor
that is not on ``meta`` there would have stayed on the CPU while the rest moved to the
GPU. The words for what is found are :mod:`torchdoctor.diagnoses.devices`'. No torch
import at module level.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdoctor.scriptrun.callsite import user_location_of_stack
from torchdoctor.scriptrun.observations import CodeLocation

if TYPE_CHECKING:
    from torch import nn


# -- tensors a module holds outside its parameters and buffers -----------------------------

@dataclass
class Stray:
    """An attribute of a module that holds tensors or modules nn.Module does not track:
    ``kind`` is ``tensor``, ``tensors`` (a list/dict of them) or ``modules``."""

    qualname: str
    attr: str
    kind: str
    value: Any = field(repr=False)
    module: Any = field(repr=False)
    tensor_ids: set[int] = field(default_factory=set)
    trainable: bool = False
    assigned_at: CodeLocation | None = None

    @property
    def name(self) -> str:
        """``block.scale``."""
        return f"{self.qualname}.{self.attr}" if self.qualname else self.attr


_LIBRARY_PREFIXES = ("torch.", "torchvision.", "torchaudio.", "torchtext.")


def find_strays(model: nn.Module) -> list[Stray]:
    """Tensors, lists/dicts of tensors and lists/dicts of modules kept as plain
    attributes of the model's own (non-library) modules."""
    import torch

    internal = set(vars(torch.nn.Module()))
    tracked = {id(m) for m in model.modules()}
    strays = []
    for qualname, module in model.named_modules():
        if type(module).__module__.startswith(_LIBRARY_PREFIXES):
            continue
        for attr, value in vars(module).items():
            if attr in internal:
                continue
            stray = _classify(qualname, attr, value, module, tracked)
            if stray is not None:
                stray.assigned_at = _assignment(type(module), attr)
                strays.append(stray)
    return strays


def _classify(qualname: str, attr: str, value: Any, module: nn.Module,
              tracked: set[int]) -> Stray | None:
    import torch

    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.requires_grad:
            return None  # CUDA ops accept CPU scalars: harmless
        return Stray(qualname, attr, "tensor", value, module, {id(value)}, value.requires_grad)
    items = list(value.values()) if isinstance(value, dict) else value
    if not isinstance(items, (list, tuple)) or not items:
        return None
    modules = [v for v in items if isinstance(v, torch.nn.Module) and id(v) not in tracked]
    if modules:
        ids = {id(t) for m in modules for t in [*m.parameters(), *m.buffers()]}
        return Stray(qualname, attr, "modules", value, module, ids, bool(ids))
    tensors = [v for v in items if isinstance(v, torch.Tensor) and v.dim() > 0]
    if tensors:
        trainable = any(t.requires_grad for t in tensors)
        return Stray(qualname, attr, "tensors", value, module, {id(t) for t in tensors}, trainable)
    return None


def _assignment(cls: type, attr: str) -> CodeLocation | None:
    """Where ``self.<attr> = ...`` appears in the class source, if it can be found."""
    from torchdoctor.scriptrun.callsite import display_path

    try:
        lines, start = inspect.getsourcelines(cls)
        path = inspect.getsourcefile(cls)
    except (OSError, TypeError):
        # a class of a script run as __main__: its module is gone, its methods' code
        # objects still name the file
        init = cls.__dict__.get("__init__")
        if not inspect.isfunction(init):
            return None
        try:
            lines, start = inspect.getsourcelines(init)
            path = inspect.getsourcefile(init)
        except (OSError, TypeError):
            return None
    pattern = re.compile(rf"\bself\.{re.escape(attr)}\s*(:[^=]*)?=(?!=)")
    for offset, text in enumerate(lines):
        if pattern.search(text) and path:
            return CodeLocation(display_path(path), start + offset)
    return None


# -- tensors forward creates on a fixed device (a run on the meta device) ------------------

#: operations that legitimately take tensors on another device (conversions, indexing
#: with CPU indices, shape-only arguments)
_PASS_THROUGH = frozenset({
    "to", "copy_", "type_as", "expand_as", "view_as", "reshape_as", "__getitem__",
    "__setitem__", "index_put", "index_put_", "new_empty", "new_zeros", "new_ones",
    "new_full", "new_tensor", "set_", "__get__", "__set__", "size", "dim", "__repr__",
    "__format__", "__len__", "__bool__", "__iter__",
})
#: tensor factories: on the meta run their result is off ``meta`` unless given device=
_FACTORIES = frozenset({
    "tensor", "as_tensor", "ones", "zeros", "empty", "full", "rand", "randn", "randint",
    "randperm", "arange", "linspace", "logspace", "eye", "tril_indices", "triu_indices",
})


@dataclass(frozen=True)
class Origin:
    """Where an off-device tensor came from: a stray attribute (``attr``), or a factory
    call in forward (``factory`` at ``created_at``)."""

    attr: str = ""
    factory: str = ""
    created_at: CodeLocation | None = None


@dataclass(frozen=True)
class Mix:
    """A tensor off the meta device met the model's tensors in operation ``op``."""

    op: str
    shape: tuple[int, ...]
    used_at: CodeLocation | None
    origin: Origin


class _Spy:
    """The torch function mode's state: where each off-device tensor came from, and
    every mixed operation seen (each off-device tensor is moved to meta so the run goes on
    and later ones are found too)."""

    def __init__(self, strays: list[Stray]) -> None:
        self.origins: dict[int, tuple[Any, Origin]] = {}
        for stray in strays:
            for tensor_id in stray.tensor_ids:
                self.origins[tensor_id] = (None, Origin(attr=stray.name))
        self.mixes: list[Mix] = []

    def handle(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from torchdoctor.tensors import iter_tensors

        name = getattr(func, "__name__", "")
        tensors = list(iter_tensors((args, kwargs)))
        on_meta = any(t.device.type == "meta" for t in tensors)
        off = {id(t): t for t in tensors if t.device.type != "meta" and t.dim() > 0}
        if on_meta and off and name not in _PASS_THROUGH:
            for tensor in off.values():
                self._record(name, tensor)
            args, kwargs = _to_meta(args, off), _to_meta(kwargs, off)
        result = func(*args, **kwargs)
        self._track(name, result, [] if on_meta else list(off))
        return result

    def _record(self, op: str, tensor: Any) -> None:
        import sys

        origin = self.origins.get(id(tensor), (None, Origin()))[1]
        used_at = user_location_of_stack(sys._getframe(3))
        self.mixes.append(Mix(op, tuple(tensor.shape), used_at, origin))

    def _track(self, name: str, result: Any, inputs: list[int]) -> None:
        """Remember factory results off meta, and what is computed from them off meta."""
        import sys

        import torch

        if not isinstance(result, torch.Tensor) or result.device.type == "meta":
            return
        if name in _FACTORIES:
            created = user_location_of_stack(sys._getframe(3))
            self.origins[id(result)] = (result, Origin(factory=name, created_at=created))
            return
        parent = next((self.origins[i] for i in inputs if i in self.origins), None)
        if parent is not None:
            self.origins[id(result)] = (result, parent[1])


def _to_meta(value: Any, off: dict[int, Any]) -> Any:
    if id(value) in off:
        return value.to("meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v, off) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v, off) for k, v in value.items()}
    return value


@dataclass
class MetaRun:
    """What a forward pass on the meta device showed."""

    mixes: list[Mix]
    failure: BaseException | None = None

    @property
    def used_attrs(self) -> set[str]:
        """Names of stray attributes that forward combined with the model's tensors."""
        return {m.origin.attr for m in self.mixes if m.origin.attr}


def run_on_meta(model: nn.Module, inputs: Any, strays: list[Stray],
                call: Any) -> MetaRun:
    """``call(model, inputs)`` under no_grad with a function mode recording every
    operation where a tensor off the meta device meets meta tensors. ``model`` and
    ``inputs`` must already be on ``meta``."""
    import torch
    from torch.overrides import TorchFunctionMode

    spy = _Spy(strays)

    class _Mode(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                               kwargs: dict[str, Any] | None = None) -> Any:
            return spy.handle(func, args, kwargs or {})

    failure = None
    try:
        with torch.no_grad(), _Mode():
            call(model, inputs)
    except Exception as exc:  # a meta run may fail for reasons of its own
        failure = exc
    spy.origins.clear()  # drop the references to the CPU tensors forward made
    return MetaRun(spy.mixes, failure)
