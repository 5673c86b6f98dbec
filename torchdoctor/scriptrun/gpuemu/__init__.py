"""GPU emulation for script mode: a script runs on a CPU-only machine as if a GPU were
there, and every operation that mixes the (emulated) GPU with the CPU is recorded at the
user's line, where a real GPU would raise.

Modules, one job each: :mod:`.table` (which tensors are on the emulated GPU, where CPU
tensors came from), :mod:`.mode` (the torch function mode), :mod:`.record` (the mixes,
deduplicated, with their cause), :mod:`.shims` (``torch.cuda``/``torch.accelerator``
answers), :mod:`.wraps` (``nn.Parameter``, ``torch.load``, DataLoader), :mod:`.where`
(whose code ran a call), :mod:`.emulation` (the run's context manager).
"""

from __future__ import annotations

from torchdoctor.scriptrun.gpuemu.emulation import NOTE, GpuEmulation, wants_emulation

__all__ = ["NOTE", "GpuEmulation", "wants_emulation"]
