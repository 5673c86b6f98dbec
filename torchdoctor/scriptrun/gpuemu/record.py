"""Recording the mixes the emulation found: at the user's line, with where the CPU
tensor came from, once per line and cause (a loop repeats the same mix every step)."""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from torch import nn

from torchdoctor.scriptrun.callsite import location_of
from torchdoctor.scriptrun.gpuemu.table import Origin
from torchdoctor.scriptrun.gpuemu.where import user_frame
from torchdoctor.scriptrun.observations import CodeLocation, DeviceMixRecord

#: how many frames of user code up the stack are searched for the module owning a stray
_SELF_FRAMES = 8


def describe(tensor: Any, device: Any) -> str:
    """``a tensor (64, 10) on cuda:0`` / ``a parameter (10, 256) on cpu``."""
    kind = "a parameter" if isinstance(tensor, nn.Parameter) else "a tensor"
    return f"{kind} {tuple(tensor.shape)} on {device}"


class MixRecorder:
    """The mixes of one run, deduplicated by user line and cause, kept up to date in
    ``sink`` (the run's list)."""

    def __init__(self, sink: list[DeviceMixRecord]) -> None:
        self._records: dict[tuple[Any, ...], DeviceMixRecord] = {}
        self._sink = sink

    def records(self) -> list[DeviceMixRecord]:
        """What was recorded, in order of first sight."""
        return list(self._records.values())

    def mix(self, op: str, gpu_tensor: Any, gpu: Any, other: Any, other_device: Any,
            origin: Origin | None) -> None:
        """A GPU tensor met ``other`` (on the CPU, from ``origin``; or on another
        emulated GPU, ``other_device``) in ``op``; recorded only when the user's code ran
        it."""
        frame = user_frame()
        if frame is None:
            return
        if other_device is not None:
            kind, detail, created = "device", "", None
        else:
            kind, detail, created = explain(other, frame, origin)
        self._add(DeviceMixRecord(op, location_of(frame), describe(gpu_tensor, gpu),
                                  describe(other, other_device or "cpu"), kind, detail,
                                  created))

    def numpy(self, tensor: Any, device: Any) -> None:
        """``.numpy()`` (or numpy's ``__array__``) of a GPU tensor in the user's code."""
        frame = user_frame()
        if frame is not None:
            self._add(DeviceMixRecord("numpy", location_of(frame), describe(tensor, device),
                                      "numpy (host memory)", "numpy"))

    def _add(self, record: DeviceMixRecord) -> None:
        key = (record.used_at, record.origin, record.detail, record.created_at)
        seen = self._records.get(key)
        self._records[key] = record if seen is None else \
            dataclasses.replace(seen, count=seen.count + 1)
        self._sink[:] = self._records.values()


def explain(tensor: Any, frame: types.FrameType,
            origin: Origin | None) -> tuple[str, str, CodeLocation | None]:
    """``(origin kind, detail, created_at)`` of a CPU tensor: a plain attribute or a
    layer in a plain list of a module running in the user's code (``model.to()`` missed
    it), else what the table knows (a DataLoader batch, a factory call, a ``.cpu()``)."""
    from torchdoctor.diagnoses.device_tracing import find_strays

    for module in _running_modules(frame):
        for stray in find_strays(module):
            if id(tensor) in stray.tensor_ids:
                kind = "module-list" if stray.kind == "modules" else "attribute"
                return kind, f"{type(module).__name__}.{stray.name}", stray.assigned_at
    if origin is None:
        return "unknown", "", None
    return origin.kind, origin.detail, origin.created_at


def _running_modules(frame: types.FrameType | None) -> list[nn.Module]:
    """The ``self`` modules of the innermost user frames (a forward and its callers)."""
    modules: list[nn.Module] = []
    for _ in range(_SELF_FRAMES):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and all(owner is not m for m in modules):
            modules.append(owner)
        frame = frame.f_back
    return modules
