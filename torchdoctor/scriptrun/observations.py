"""What a script-mode run saw, as plain data.

:mod:`torchdoctor.scriptrun.instrument` fills a :class:`ScriptRun` while the user's file runs;
the checks read it afterwards. Its records live in :mod:`torchdoctor.scriptrun.records`
(importable from here too). Records hold summaries (shapes, dtypes, a few numbers),
never tensors, so nothing of the user's run is kept alive. No torch import here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from torchdoctor.findings import WrittenFile
from torchdoctor.scriptrun.records import (  # re-exported: the records' historic home
    BackwardRecord,
    CarriedGradRecord,
    CheckpointRecord,
    CodeLocation,
    DeviceMixRecord,
    DirectForwardRecord,
    ErrorRecord,
    ForwardRecord,
    GradlessRecord,
    KeptGraphRecord,
    LoadRecord,
    LossRecord,
    ModuleCall,
    ModuleInfo,
    NonFiniteRecord,
    ObservedModel,
    OpNode,
    OpProblem,
    OptimizerRecord,
    PassRecord,
    StepRecord,
    TensorSummary,
    UpdateRecord,
    WarningRecord,
)
from torchdoctor.scriptrun.setupdata import CapturedSetup

__all__ = [
    "BackwardRecord",
    "CarriedGradRecord",
    "CheckpointRecord",
    "CodeLocation",
    "DeviceMixRecord",
    "DirectForwardRecord",
    "ErrorRecord",
    "ForwardRecord",
    "GradlessRecord",
    "KeptGraphRecord",
    "LoadRecord",
    "LossRecord",
    "ModuleCall",
    "ModuleInfo",
    "NonFiniteRecord",
    "ObservedModel",
    "OpNode",
    "OpProblem",
    "OptimizerRecord",
    "PassRecord",
    "RunStatus",
    "ScriptRun",
    "StepRecord",
    "TensorSummary",
    "UpdateRecord",
    "WarningRecord",
]


class RunStatus(str, enum.Enum):
    """How the user's script ended."""

    COMPLETED = "completed"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    EXITED = "exited"  #: sys.exit with a non-zero code
    STOPPED = "stopped"  #: torchdoctor cut it at a cap (``ScriptRun.cut`` says which)


@dataclass
class ScriptRun:
    """Everything observed while the user's file ran in the fast-dev-run regime."""

    path: str
    status: RunStatus = RunStatus.COMPLETED
    seconds: float = 0.0
    models: list[ObservedModel] = field(default_factory=list)
    forwards: list[ForwardRecord] = field(default_factory=list)
    losses: list[LossRecord] = field(default_factory=list)
    backwards: list[BackwardRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    carried_grads: list[CarriedGradRecord] = field(default_factory=list)
    #: optimizers seen (by their ``zero_grad()`` or ``step()``), in order of first sight
    optimizers: list[OptimizerRecord] = field(default_factory=list)
    #: parameters of observed models that held a non-zero gradient at an optimizer step
    #: and that no optimizer seen in the run holds (they never change)
    unoptimized_grads: list[str] = field(default_factory=list)
    nonfinite: list[NonFiniteRecord] = field(default_factory=list)
    warnings: list[WarningRecord] = field(default_factory=list)
    #: ``torch.load`` calls that may execute code from the file (see :class:`LoadRecord`)
    unsafe_loads: list[LoadRecord] = field(default_factory=list)
    #: ``model.forward(x)`` calls of the user's code (hooks bypassed)
    direct_forwards: list[DirectForwardRecord] = field(default_factory=list)
    #: update sizes of the first steps of each optimizer, per param group
    update_sizes: list[UpdateRecord] = field(default_factory=list)
    gradless: list[GradlessRecord] = field(default_factory=list)
    kept_graphs: list[KeptGraphRecord] = field(default_factory=list)
    error: ErrorRecord | None = None
    loader_passes: int = 0
    batches: int = 0
    passes: list[PassRecord] = field(default_factory=list)  #: DataLoader passes
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    cut: str = ""  #: why the run was cut before the program's end
    #: wall seconds spent in each phase: "data" (fetching batches), "forward",
    #: "backward", "step" (optimizer), "other" (the rest of the script)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: what the op tracer found over the first steps (unsafe numerics, broadcasts)
    op_problems: list[OpProblem] = field(default_factory=list)
    #: user-code tensor ops the op tracer looked at (0: tracing off or nothing seen)
    traced_ops: int = 0
    #: what the script would have written or removed (see WrittenFile), capped
    written: list[WrittenFile] = field(default_factory=list)
    #: how many more than ``written`` holds
    written_more: int = 0
    #: whether the script ran with an emulated GPU (:mod:`torchdoctor.scriptrun.gpuemu`)
    gpu_emulated: bool = False
    #: operations that mixed the emulated GPU with the CPU (see :class:`DeviceMixRecord`)
    device_mixes: list[DeviceMixRecord] = field(default_factory=list)
    #: how the script trained each root model (optimizer, loss, one batch...)
    setups: list[CapturedSetup] = field(default_factory=list)
    #: failures of torchdoctor's own recorders during the run (``method: traceback``),
    #: kept from the script; the checks that read the run report ``crashed``
    internal_errors: list[str] = field(default_factory=list)

    @property
    def applied_steps(self) -> list[StepRecord]:
        """Optimizer steps that really ran (not skipped past --max-steps)."""
        return [s for s in self.steps if not s.skipped]

    def forwards_of(self, model: int) -> list[ForwardRecord]:
        """The forwards of one observed model, in order."""
        return [f for f in self.forwards if f.model == model]
