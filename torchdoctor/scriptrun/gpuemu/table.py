"""Which tensors live on the emulated GPU, and where the known CPU tensors came from.

Two side tables keyed by ``id(tensor)``, each entry holding a weak reference whose
callback removes it when the tensor dies (so a recycled id never inherits a tag). A
``WeakKeyDictionary`` cannot be used: ``Tensor.__eq__`` is elementwise. Nothing is
stored on the tensors themselves, and :meth:`DeviceTable.clear` forgets everything when
the run ends. Untagged tensors are on the CPU, for real and for the program.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from torchdoctor.scriptrun.observations import CodeLocation


@dataclass(frozen=True)
class Origin:
    """Where a CPU tensor came from: ``kind`` is ``loader`` (a DataLoader batch),
    ``factory`` (``torch.<detail>(...)`` without ``device=``) or ``cpu-copy`` (moved to
    the CPU by the program); ``created_at`` is the user's line."""

    kind: str
    detail: str = ""
    created_at: CodeLocation | None = None


class DeviceTable:
    """Emulated devices of tensors (``tag``/``device_of``) and origins of CPU tensors
    the program made itself (``set_origin``/``origin_of``)."""

    def __init__(self) -> None:
        #: a DataLoader is making a batch: the batch is marked as a whole afterwards, so
        #: the dataset's per-sample CPU work needs no bookkeeping
        self.fetching = False
        #: whether any tensor was ever put on the emulated GPU
        self.used = False
        self._devices: dict[int, tuple[weakref.ref[Any], torch.device]] = {}
        self._origins: dict[int, tuple[weakref.ref[Any], Origin]] = {}

    def __bool__(self) -> bool:
        return bool(self._devices)

    def device_of(self, tensor: torch.Tensor) -> torch.device | None:
        """The emulated device of ``tensor``, or None (it is on the CPU)."""
        entry = self._devices.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def tag(self, tensor: torch.Tensor, device: torch.device | None) -> None:
        """Put ``tensor`` on the emulated ``device`` (None: back on the CPU)."""
        key = id(tensor)
        if device is None:
            self._devices.pop(key, None)
            return
        entry = self._devices.get(key)
        if entry is not None and entry[0]() is tensor:
            self._devices[key] = (entry[0], device)
            return
        self._devices[key] = (weakref.ref(tensor, partial(_drop, self._devices, key)), device)
        self._origins.pop(key, None)
        self.used = True

    def origin_of(self, tensor: torch.Tensor) -> Origin | None:
        """Where a CPU tensor of the program came from, when known."""
        entry = self._origins.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def set_origin(self, tensor: torch.Tensor, origin: Origin) -> None:
        """Remember where a CPU tensor came from."""
        key = id(tensor)
        self._origins[key] = (weakref.ref(tensor, partial(_drop, self._origins, key)), origin)

    def clear(self) -> None:
        """Forget every tensor (the run is over)."""
        self._devices.clear()
        self._origins.clear()


def _drop(table: dict[int, tuple[weakref.ref[Any], Any]], key: int,
          ref: weakref.ref[Any]) -> None:
    """A tensor died: forget it, unless its id already belongs to a newer tensor."""
    entry = table.get(key)
    if entry is not None and entry[0] is ref:
        del table[key]
