"""The records a script-mode run is made of, as plain data: one dataclass per kind of
event (a forward, a loss, a step, a DataLoader pass, a device mix...). A
:class:`~torchdoctor.scriptrun.observations.ScriptRun` holds lists of them. Records hold
summaries (shapes, dtypes, a few numbers), never tensors. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
class PassRecord:
    """One DataLoader pass: which loader (numbered by first pass), which pass of it."""

    index: int
    loader: int
    number: int  #: 0-based pass of this loader
    batches: int = 0
    backwards: int = 0
    capped: bool = False  #: the budget stopped it while its loader had batches left
    extended: bool = False  #: it yielded past --limit-batches to reach two steps
    finished: bool = False


@dataclass(frozen=True)
class CheckpointRecord:
    """A ``torch.save``/``torch.load``/``load_state_dict`` call of the user's code."""

    kind: str  #: "save", "load" or "load_state_dict"
    location: CodeLocation | None
    after_forwards: int = 0  #: forwards run before it (its place in the program)


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


@dataclass(frozen=True)
class DeviceMixRecord:
    """An operation of the user's code that mixed the emulated GPU with the CPU (or two
    emulated GPUs) where a real GPU raises; recorded once per line and cause."""

    op: str  #: the torch function (``add``, ``cat``, ``cross_entropy``, ``numpy``...)
    used_at: CodeLocation | None  #: the user's line that ran it
    gpu: str  #: the emulated-GPU side: ``a tensor (64, 10) on cuda:0``
    other: str  #: the other side: ``a tensor (64,) on cpu``
    origin: str  #: ``loader``, ``factory``, ``attribute``, ``module-list``, ``cpu-copy``,
    #: ``numpy`` or ``device`` (two emulated GPUs)
    detail: str = ""  #: the factory, the attribute's name, the list's name
    created_at: CodeLocation | None = None  #: where the CPU side was made (or fetched)
    count: int = 1  #: how many times it ran in the run


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
