"""Replacements that keep the emulated device where torch's Python code makes tensors
the function mode does not see: ``nn.Parameter(t)`` (``_make_subclass``), ``torch.load``
(``map_location="cuda"``), gradients handed to ``register_hook`` callbacks by autograd,
DataLoader batches (their origin, for the finding; ``pin_memory=True`` pins nothing
without a real GPU), and ``nn.DataParallel`` (its scatter is CUDA code)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader

from torchdoctor.scriptrun.callsite import user_callsite
from torchdoctor.scriptrun.gpuemu.mode import emulated_device
from torchdoctor.scriptrun.gpuemu.table import DeviceTable, Origin
from torchdoctor.scriptrun.gpuemu.where import user_line
from torchdoctor.scriptrun.patches import PatchSet
from torchdoctor.tensors import iter_tensors


def install_wraps(patches: PatchSet, table: DeviceTable) -> None:
    """Patch what :mod:`torchdoctor.scriptrun.gpuemu.mode` cannot see."""
    for cls in (nn.Parameter, getattr(nn, "Buffer", None)):
        if cls is not None and "__new__" in vars(cls):
            patches.patch(cls, "__new__", staticmethod(_wrap_new(cls, table)))
    patches.patch(torch, "load", _wrap_load(torch.load, table))
    patches.patch(torch, "from_numpy", _wrap_from_numpy(torch.from_numpy, table))
    patches.patch(DataLoader, "__iter__", _wrap_iter(DataLoader.__iter__, table))
    patches.patch(nn.DataParallel, "forward", _data_parallel_forward)


def _data_parallel_forward(self: nn.DataParallel, *inputs: Any, **kwargs: Any) -> Any:
    """``nn.DataParallel`` on the one emulated GPU: what torch does for one device (copy
    the inputs to it, run the module), without its scatter, which calls the CUDA driver.
    (pytorch/examples imagenet wraps every model in DataParallel when CUDA is there.)"""
    if self.device_ids:
        device = torch.device("cuda", self.device_ids[0])
        # under the function mode, .to() makes the emulated-GPU copies scatter would make
        inputs, kwargs = tree_map(
            lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, (inputs, kwargs))
    return self.module(*inputs, **kwargs)


def _wrap_new(cls: type, table: DeviceTable) -> Callable[..., Any]:
    original = vars(cls)["__new__"]
    new = original.__func__ if isinstance(original, staticmethod) else original

    def emulated_new(subclass: type, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        made = new(subclass, data, *args, **kwargs)
        if isinstance(data, torch.Tensor):
            table.tag(made, table.device_of(data))
            origin = table.origin_of(data)
            if origin is not None:
                table.set_origin(made, origin)
        return made
    return emulated_new


def _wrap_from_numpy(original: Callable[..., Any], table: DeviceTable) -> Callable[..., Any]:
    """``torch.from_numpy`` (no function mode sees it): its result is a CPU tensor of the
    program's own, made at the user's line."""
    def emulated_from_numpy(array: Any) -> torch.Tensor:
        tensor: torch.Tensor = original(array)
        if table.fetching:  # a dataset's sample: the batch is marked as a whole
            return tensor
        where = user_line()
        if where is not None and tensor.dim() > 0:
            table.set_origin(tensor, Origin("factory", "from_numpy", where))
        return tensor
    return emulated_from_numpy


def _wrap_load(load: Callable[..., Any], table: DeviceTable) -> Callable[..., Any]:
    """``torch.load`` mapping every CUDA location to the CPU, tagging what it returns
    with the CUDA device the program asked for (or the checkpoint named)."""
    def emulated_load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        asked: list[torch.device] = []
        target = emulated_device(map_location)
        if target is not None:
            asked.append(target)
            map_location = "cpu"
        elif isinstance(map_location, dict):
            mapped = {k: emulated_device(v) for k, v in map_location.items()}
            asked.extend(d for d in mapped.values() if d is not None)
            map_location = {k: "cpu" if mapped[k] is not None else v
                            for k, v in map_location.items()}
        elif map_location is None or callable(map_location):
            map_location = _remapping(map_location, asked)
        result = load(f, map_location, *args, **kwargs)
        if asked:
            found = [*result.parameters(), *result.buffers()] \
                if isinstance(result, nn.Module) else iter_tensors(result)
            for tensor in found:
                table.tag(tensor, asked[0])
        return result
    return emulated_load


def _remapping(user: Any, asked: list[torch.device]) -> Callable[[Any, str], Any]:
    """A map_location callable: the program's own (when it fails for want of a real GPU,
    the storage stays on the CPU), or the checkpoint's locations, CUDA ones kept on the
    CPU and noted in ``asked``."""
    def remap(storage: Any, location: str) -> Any:
        if callable(user):
            try:
                result = user(storage, location)
            except (RuntimeError, AssertionError):  # storage.cuda() without a GPU
                result = None
            if result is not None and not (isinstance(result, str) and "cuda" in result):
                return result
            asked.append(torch.device("cuda", 0))
            return storage
        device = emulated_device(location)
        if device is not None:
            asked.append(device)
        return storage
    return remap


def _wrap_iter(original: Callable[..., Any], table: DeviceTable) -> Callable[..., Any]:
    def emulated_iter(loader: DataLoader) -> Iterator[Any]:
        pin = loader.pin_memory
        loader.pin_memory = False  # nothing to pin for: no real GPU
        try:
            batches = original(loader)
        finally:
            loader.pin_memory = pin
        return _MarkedBatches(batches, table)
    return emulated_iter


class _MarkedBatches:
    """A DataLoader iterator whose batch tensors are marked as fetched at the user's
    loop line (they are on the CPU until the program moves them)."""

    def __init__(self, batches: Iterator[Any], table: DeviceTable) -> None:
        self._batches = batches
        self._table = table

    def __iter__(self) -> _MarkedBatches:
        return self

    def __next__(self) -> Any:
        fetching, self._table.fetching = self._table.fetching, True
        try:
            batch = next(self._batches)
        finally:
            self._table.fetching = fetching
        origin = Origin("loader", "", user_callsite(2))
        for tensor in iter_tensors(batch):
            if tensor.dim() > 0 and self._table.device_of(tensor) is None:
                self._table.set_origin(tensor, origin)
        return batch

    def __len__(self) -> int:
        return len(self._batches)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batches, name)
