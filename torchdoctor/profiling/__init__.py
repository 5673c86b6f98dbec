"""Where the time of a training step goes: data loading, forward, backward, optimizer step.

Four entry points produce one :class:`ProfileReport` (phase split, top operators, peak
memory, advice, optional Chrome trace):

* :func:`profile_steps` -- a context manager around your own loop: fetch batches through
  ``prof.batches(loader)`` and mark phases with ``prof.phase("forward")``...;
* :func:`profile_loop` -- profiles ``step_fn(batch)`` over a loader and splits the phases
  itself (module forwards -> forward, ``optimizer.step`` -> step, the rest -> backward);
* :func:`profile_reference` -- the bundled FashionMNIST trainer;
* :func:`profile_script` -- a user's file, run in torchdoctor's fast-dev-run regime.

Phase seconds are wall-clock and exclusive (a nested phase pauses the enclosing one); on
CUDA the device is synchronised at each phase boundary so asynchronous kernels are charged
to the phase that launched them. torch.profiler supplies operators and memory; every phase
is also a ``record_function`` range (``torchdoctor.forward``...) visible in the trace.

The package's modules, one job each: ``base`` (phase names, argument checks), ``report``
(the report dataclasses, JSON), ``render`` (the text report), ``advice`` (rules and their
thresholds), ``recording`` (torch.profiler, operators, memory), ``timing`` (the phase
clock, :func:`profile_steps`), ``loops`` (:func:`profile_loop`), ``reference``
(:func:`profile_reference`), ``script`` (:func:`profile_script`), ``cli``
(``torchdoctor profile``). Import from ``torchdoctor.profiling``, not from them.
"""

from __future__ import annotations

from torchdoctor.profiling.advice import (
    COMPUTE_BOUND,
    DATA_BOUND,
    DEVICE_IDLE,
    OPTIMIZER_HEAVY,
    OTHER_HEAVY,
    advise,
)
from torchdoctor.profiling.base import DEFAULT_TOP, FORMATS, PHASES, check_device
from torchdoctor.profiling.cli import run_profile_cli
from torchdoctor.profiling.loops import profile_loop
from torchdoctor.profiling.reference import profile_reference
from torchdoctor.profiling.report import LoaderInfo, OpRow, ProfileReport
from torchdoctor.profiling.script import profile_script
from torchdoctor.profiling.timing import StepProfiler, profile_steps

__all__ = [
    "COMPUTE_BOUND",
    "DATA_BOUND",
    "DEFAULT_TOP",
    "DEVICE_IDLE",
    "FORMATS",
    "OPTIMIZER_HEAVY",
    "OTHER_HEAVY",
    "PHASES",
    "LoaderInfo",
    "OpRow",
    "ProfileReport",
    "StepProfiler",
    "advise",
    "check_device",
    "profile_loop",
    "profile_reference",
    "profile_script",
    "profile_steps",
    "run_profile_cli",
]
