"""What scripts call on ``torch.cuda`` / ``torch.accelerator``, answered as by a machine
with one GPU while the emulation runs (each patched through a PatchSet and restored).

torchdoctor's own code keeps seeing the truth: :func:`is_available` and
:func:`device_count` answer for the machine when asked from torchdoctor's modules.
``manual_seed``, ``set_rng_state`` and friends do nothing: the emulated GPU has no
generator of its own (its tensors are drawn from the CPU's; ``get_rng_state`` answers
with a copy of the CPU's state, for checkpoints that save it), and the real CUDA
generators must not change behind the program's back.
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from torchdoctor.scriptrun.patches import PatchSet

#: what get_device_name() answers
DEVICE_NAME = "emulated by torchdoctor"
_TOTAL_MEMORY = 16 * 1024**3


def _asked_by_us() -> bool:
    import sys

    from torchdoctor.scriptrun.gpuemu.where import is_ours

    return is_ours(sys._getframe(2).f_code.co_filename)


def _truthful(real: Callable[..., Any], emulated: Any) -> Callable[..., Any]:
    def answer(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **kwargs) if _asked_by_us() else emulated
    answer.__name__ = getattr(real, "__name__", "answer")
    answer.__doc__ = getattr(real, "__doc__", None)
    return answer


def _const(value: Any) -> Callable[..., Any]:
    def answer(*args: Any, **kwargs: Any) -> Any:
        return value
    return answer


class _Event:
    """``torch.cuda.Event(enable_timing=True)`` timed with the host clock."""

    def __init__(self, enable_timing: bool = False, **kwargs: Any) -> None:
        self.recorded_at: float | None = None

    def record(self, stream: Any = None) -> None:
        self.recorded_at = time.perf_counter()

    def synchronize(self) -> None:
        """Nothing to wait for."""

    def wait(self, stream: Any = None) -> None:
        """Nothing to wait for."""

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: _Event) -> float:
        """Milliseconds between two recorded events."""
        return ((end.recorded_at or 0.0) - (self.recorded_at or 0.0)) * 1000.0


class _Stream:
    """A stream of the emulated GPU: everything already happened, nothing is captured."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.device = torch.device("cuda", 0)

    def is_capturing(self) -> bool:
        return False

    def synchronize(self) -> None:
        """Nothing to wait for."""

    def query(self) -> bool:
        return True

    def wait_stream(self, stream: Any) -> None:
        """Nothing to wait for."""

    def wait_event(self, event: Any) -> None:
        """Nothing to wait for."""

    def record_event(self, event: Any = None) -> _Event:
        recorded = event if isinstance(event, _Event) else _Event()
        recorded.record()
        return recorded


class _InDevice(contextlib.nullcontext):  # type: ignore[type-arg]
    """``with torch.cuda.device(i)`` / ``device_of(t)``: one emulated device, nothing to
    switch."""

    def __init__(self, device: Any = None) -> None:
        super().__init__()
        self.idx = 0


def _properties(device: Any = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=DEVICE_NAME, total_memory=_TOTAL_MEMORY, major=8,
                                 minor=0, multi_processor_count=1, is_integrated=False,
                                 is_multi_gpu_board=False)


def _cuda_shims() -> Iterator[tuple[str, Any]]:
    cuda = torch.cuda
    yield "is_available", _truthful(cuda.is_available, True)
    yield "device_count", _truthful(cuda.device_count, 1)
    yield "current_device", _const(0)
    yield "get_device_name", _const(DEVICE_NAME)
    yield "get_device_properties", _properties
    yield "get_device_capability", _const((8, 0))
    yield "is_bf16_supported", _const(True)
    yield "Event", _Event
    yield "Stream", _Stream
    yield "current_stream", _const(_Stream())
    yield "default_stream", _const(_Stream())
    yield "stream", _const(contextlib.nullcontext())
    yield "device", _InDevice
    yield "device_of", _InDevice
    yield "is_current_stream_capturing", _const(False)
    yield "mem_get_info", _const((_TOTAL_MEMORY, _TOTAL_MEMORY))
    yield "memory_stats", _const({})
    yield "memory_summary", _const(f"{DEVICE_NAME}: no memory statistics\n")
    yield "get_rng_state", lambda device="cuda": torch.get_rng_state()
    yield "get_rng_state_all", lambda: [torch.get_rng_state()]
    yield "initial_seed", lambda: torch.initial_seed()
    for name in ("set_rng_state", "set_rng_state_all", "set_device", "synchronize",
                 "empty_cache", "ipc_collect", "reset_peak_memory_stats",
                 "reset_max_memory_allocated", "reset_accumulated_memory_stats",
                 "manual_seed", "manual_seed_all", "seed", "seed_all", "init",
                 "set_per_process_memory_fraction"):
        yield name, _const(None)
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved",
                 "max_memory_reserved"):
        yield name, _const(0)


def _accelerator_shims() -> Iterator[tuple[str, Any]]:
    accelerator = torch.accelerator
    yield "is_available", _truthful(accelerator.is_available, True)
    yield "device_count", _truthful(accelerator.device_count, 1)
    yield "current_accelerator", _const(torch.device("cuda"))
    yield "current_device_index", _const(0)
    yield "set_device_index", _const(None)
    yield "synchronize", _const(None)
    yield "current_stream", _const(_Stream())


def install_shims(patches: PatchSet) -> None:
    """Patch ``torch.cuda`` (and ``torch.accelerator``) for a one-GPU machine; cuDNN
    accepts no tensor (an RNN's ``flatten_parameters`` is then the no-op it is on the
    CPU)."""
    patches.patch(torch.backends.cudnn, "is_acceptable", _const(False))
    for name, value in _cuda_shims():
        if hasattr(torch.cuda, name):
            patches.patch(torch.cuda, name, value)
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        for name, value in _accelerator_shims():
            if hasattr(accelerator, name):
                patches.patch(accelerator, name, value)
