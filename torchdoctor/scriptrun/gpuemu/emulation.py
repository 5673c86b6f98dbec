"""One script run with an emulated GPU: the shims and wraps installed, the function
mode pushed, and everything taken back when the run ends (the mixes go to the run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.overrides import _get_current_function_mode_stack, _pop_mode

from torchdoctor.scriptrun.gpuemu.mode import EmulationMode
from torchdoctor.scriptrun.gpuemu.record import MixRecorder
from torchdoctor.scriptrun.gpuemu.shims import install_shims
from torchdoctor.scriptrun.gpuemu.table import DeviceTable
from torchdoctor.scriptrun.gpuemu.wraps import install_wraps
from torchdoctor.scriptrun.patches import PatchSet

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckOptions
    from torchdoctor.scriptrun.observations import ScriptRun

#: the report's note for an emulated run
NOTE = ("GPU emulation: this machine has no GPU, so the script ran as if one were there "
        "(tensors compute on the CPU but keep the device the script gave them; operations "
        "that mix GPU and CPU tensors are reported where a real GPU would raise); "
        "--gpu-emulation off turns this off")


def wants_emulation(options: CheckOptions) -> bool:
    """``--gpu-emulation``: ``on``, ``off``, or ``auto`` (on when this machine has no
    usable CUDA device)."""
    if options.gpu_emulation == "auto":
        return not torch.cuda.is_available()
    return bool(options.gpu_emulation == "on")


class GpuEmulation:
    """Context manager: the script runs inside it as if a GPU were there (a no-op when
    ``enabled`` is False)."""

    def __init__(self, run: ScriptRun, enabled: bool) -> None:
        self.run = run
        self.enabled = enabled
        self.table = DeviceTable()
        self.recorder = MixRecorder(run.device_mixes)
        self.mode = EmulationMode(self.table, self.recorder)
        self._patches = PatchSet()
        self._pushed = False

    def __enter__(self) -> GpuEmulation:
        if not self.enabled:
            return self
        self._patches.install([lambda p: install_shims(p),
                               lambda p: install_wraps(p, self.table)])
        try:
            self.mode.__enter__()
        except BaseException:
            self._patches.undo()
            raise
        self._pushed = True
        self.run.gpu_emulated = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pushed:
            self._pop()
        self._patches.undo()
        if self.table.used:  # a script that never put a tensor on the GPU needs no note
            self.run.notes.append(NOTE)
        self.table.clear()

    def _pop(self) -> None:
        """Pop the mode, and any the script left pushed above it."""
        self._pushed = False
        if any(mode is self.mode for mode in _get_current_function_mode_stack()):
            while _pop_mode() is not self.mode:
                pass
