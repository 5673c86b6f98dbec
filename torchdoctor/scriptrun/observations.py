"""What a script-mode run saw, as plain data.

:mod:`torchdoctor.scriptrun.instrument` fills a :class:`ScriptRun` while the user's file runs;
the checks read it afterwards. Records hold summaries (shapes, dtypes, a few numbers),
never tensors, so nothing of the user's run is kept alive. No torch import here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from torchdoctor.findings import WrittenFile
from torchdoctor.scriptrun.setupdata import CapturedSetup


@dataclass(frozen=True)
class CodeLocation:
    """A line in the user's code."""

    file: str
    line: int
    function: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class TensorSummary:
    """Shape, dtype, device and a few statistics of one tensor.

    The statistics are None for non-floating tensors (and on the meta device) except
    ``min``/``max``, which are filled for integer tensors too (label ranges).
    ``rows_sum_to_one`` is True for a float tensor of 2+ dims whose values are all in
    [0, 1] and whose rows (last dim... dim 1) sum to 1: it looks like probabilities.
    ``log_probabilities`` is True when every row of exp(x) sums to 1.
    """

    shape: tuple[int, ...]
    dtype: str
    device: str
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    finite: bool = True
    rows_sum_to_one: bool = False
    log_probabilities: bool = False

    @property
    def is_floating(self) -> bool:
        """Whether the dtype is a floating-point one."""
        return "float" in self.dtype or "bfloat" in self.dtype or "half" in self.dtype

    def describe(self) -> str:
        """``(64, 1, 28, 28) float32 cpu``."""
        return f"{self.shape} {self.dtype.replace('torch.', '')} {self.device}"


@dataclass(frozen=True)
class ModuleInfo:
    """One module of a model: its qualified name (``""`` for the root), type, and
    ``extra_repr`` (``in_features=784, out_features=256, bias=True``)."""

    qualname: str
    type_name: str
    detail: str = ""

    def describe(self) -> str:
        """``fc1 (Linear, in_features=784, out_features=256, bias=True)``."""
        name = self.qualname or "<model>"
        inside = f"{self.type_name}, {self.detail}" if self.detail else self.type_name
        return f"{name} ({inside})"


@dataclass(frozen=True)
class ModuleCall:
    """A module that was executing (with its inputs) when something happened."""

    module: ModuleInfo
    inputs: tuple[TensorSummary, ...] = ()


@dataclass
class ObservedModel:
    """A root model the script called (a module with parameters, not a loss)."""

    index: int
    type_name: str
    location: CodeLocation | None
    #: qualified names of submodules whose behaviour depends on ``training``
    #: (Dropout, BatchNorm, ...). Empty means eval() makes no difference.
    mode_sensitive: list[str] = field(default_factory=list)
    parameter_count: int = 0


@dataclass
class ForwardRecord:
    """One call of a root model."""

    index: int
    model: int
    training: bool
    grad_enabled: bool
    step_count: int
    location: CodeLocation | None
    inputs: tuple[TensorSummary, ...] = ()
    output: TensorSummary | None = None
    #: set when a backward pass ran before the next forward of the same model
    backward_followed: bool = False
    #: index of the DataLoader pass this forward happened in (-1: outside any)
    loader_pass: int = -1


@dataclass
class LossRecord:
    """One call of a loss (an ``nn.*Loss`` module or a ``torch.nn.functional`` loss)."""

    index: int
    loss: str
    prediction: TensorSummary
    target: TensorSummary | None
    value: float | None
    step_count: int
    location: CodeLocation | None
    #: keyword settings that matter to the checks (reduction, ignore_index...)
    options: dict[str, str] = field(default_factory=dict)
    #: index of the DataLoader pass this loss was computed in (-1: outside any)
    loader_pass: int = -1


@dataclass
class BackwardRecord:
    """One ``backward()`` call on a scalar (the loss)."""

    index: int
    value: float | None
    finite: bool
    step_count: int
    location: CodeLocation | None
    #: parameters (``model.fc1.weight``-style names) whose gradient was NaN/inf afterwards
    nonfinite_grads: list[str] = field(default_factory=list)


@dataclass
class StepRecord:
    """One ``optimizer.step()`` call."""

    index: int
    optimizer: int
    optimizer_type: str
    location: CodeLocation | None
    lr: float | None = None
    skipped: bool = False
    #: parameters whose value was NaN/inf after the step
    nonfinite_params: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OptimizerRecord:
    """An optimizer the script used: first seen at a ``zero_grad()`` or ``step()`` call."""

    index: int
    optimizer_type: str
    location: CodeLocation | None


@dataclass
class CarriedGradRecord:
    """Gradients left from before optimizer step ``step_index`` were still there when
    the next backward pass added to them: zero_grad was missing (or cleared other
    parameters)."""

    optimizer: int
    optimizer_type: str
    step_index: int
    step_location: CodeLocation | None
    params: list[str] = field(default_factory=list)
    #: where zero_grad was called since that step, if anywhere (wrong optimizer/model)
    zero_grad_locations: list[CodeLocation] = field(default_factory=list)
    #: tensors updated by hand (no optimizer): ``step_index`` counts the updates
    manual: bool = False


@dataclass
class NonFiniteRecord:
    """The first place a NaN/inf appeared, localised by replaying the step with
    per-module hooks."""

    step_count: int
    kind: str  #: "loss", "gradient", "parameter" or "activation"
    where: str  #: module or parameter name, "" when unknown
    location: CodeLocation | None
    module: ModuleInfo | None = None
    loss_history: list[float] = field(default_factory=list)
    lr: float | None = None
    detail: str = ""


@dataclass
class ErrorRecord:
    """The exception that ended the user's script."""

    type_name: str
    message: str
    location: CodeLocation | None
    #: modules executing at the time, outermost first; the last one raised
    module_stack: list[ModuleCall] = field(default_factory=list)
    traceback_text: str = ""
    #: True when it was raised before any model ran (an import-time failure)
    before_training: bool = False


@dataclass(frozen=True)
class WarningRecord:
    """A warning the user's code triggered (torch's broadcast warning in losses...)."""

    category: str
    message: str
    location: CodeLocation | None


@dataclass(frozen=True)
class LoadRecord:
    """A ``torch.load`` call of the user's that may unpickle arbitrary objects
    (``weights_only`` False, given or by default)."""

    location: CodeLocation | None
    explicit: bool  #: ``weights_only=False`` was written (not torch's default)


@dataclass(frozen=True)
class DirectForwardRecord:
    """A module's ``forward`` called directly by the user's code (``model.forward(x)``),
    so that its hooks were bypassed."""

    location: CodeLocation
    module: str  #: the class name of the module whose forward was called


@dataclass
class UpdateRecord:
    """How far the first optimizer steps moved one param group: ``||Δw|| / ||w||`` per
    step (over the parameters that had a gradient), with the learning rate of each."""

    optimizer: int
    optimizer_type: str
    group: int
    first_param: str  #: the name of the group's first parameter, to say which group
    location: CodeLocation | None  #: the first measured ``step()`` call
    lrs: list[float] = field(default_factory=list)
    #: NaN for a step from all-zero weights (no size to compare with)
    ratios: list[float] = field(default_factory=list)
    values: int = 0  #: weights measured (a sample of each parameter's first values)
    #: the lr a scheduler started from (its ``initial_lr``), None without a scheduler
    initial_lr: float | None = None


@dataclass(frozen=True)
class GradlessRecord:
    """Parameters an optimizer holds (requires_grad=True) that had no ``.grad`` at any
    of its steps, while others of it did."""

    optimizer_type: str
    location: CodeLocation | None  #: the optimizer's first ``step()``
    params: list[str]
    #: modules of those parameters that never ran a forward (unused layers)
    unused_modules: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class KeptGraphRecord:
    """Losses whose backward already ran but whose autograd graph stayed alive across
    later steps: something of the user's still references them."""

    backward_location: CodeLocation | None
    #: the line that keeps them (``total_loss += loss``), when found
    keeper_location: CodeLocation | None
    variable: str  #: the name of the user's variable that keeps them ("" if not found)
    kept: int  #: earlier steps' graphs alive when it was found


class RunStatus(str, enum.Enum):
    """How the user's script ended."""

    COMPLETED = "completed"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    EXITED = "exited"  #: sys.exit with a non-zero code
    STOPPED = "stopped"  #: torchdoctor ended it at the --max-steps budget


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
    #: wall seconds spent in each phase: "data" (fetching batches), "forward",
    #: "backward", "step" (optimizer), "other" (the rest of the script)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: what the op tracer found over the first steps (unsafe numerics, broadcasts)
    op_problems: list[OpProblem] = field(default_factory=list)
    #: user-code tensor ops the op tracer looked at (0: tracing off or nothing seen)
    traced_ops: int = 0
    #: how the script trained each root model (optimizer, loss, one batch...)
    setups: list[CapturedSetup] = field(default_factory=list)
    #: what the script would have written or removed (see WrittenFile), capped
    written: list[WrittenFile] = field(default_factory=list)
    #: how many more than ``written`` holds
    written_more: int = 0

    @property
    def applied_steps(self) -> list[StepRecord]:
        """Optimizer steps that really ran (not skipped past --max-steps)."""
        return [s for s in self.steps if not s.skipped]

    def forwards_of(self, model: int) -> list[ForwardRecord]:
        """The forwards of one observed model, in order."""
        return [f for f in self.forwards if f.model == model]


@dataclass(frozen=True)
class OpProblem:
    """An unsafe expression or a meaning-changing broadcast found by the op tracer
    (:mod:`torchdoctor.hooks.optrace`) in the user's code."""

    check: str  #: the check id it is reported under
    rule: str  #: which pattern (``log-softmax``, ``broadcast``...)
    severity: str  #: "error" or "warning"
    message: str
    hint: str
    location: CodeLocation | None


@dataclass(eq=False)
class OpNode:
    """One traced call: what produced a tensor (no tensor is kept)."""

    op: str
    inputs: tuple[OpNode | None, ...]
    shape: tuple[int, ...]
    #: derived from a model's output (the prediction side)
    pred: bool = False
    #: called directly by user code (else from inside torch, e.g. nn.Softmax)
    user: bool = False
    location: CodeLocation | None = None
    #: the plain numbers among the arguments (the 1 of ``1 - p``, an exponent, an eps)
    scalars: tuple[float, ...] = ()
