"""What a check is given: the options, the script-mode observations, the models found,
and the training setup (batch, loss, optimizer) to train copies of them with.

The training setup is the script's own for a model it trained (captured in script mode,
see :mod:`torchdoctor.engine.usersetup`), else the reference one (a FashionMNIST batch
of 64, CrossEntropyLoss, Adam 1e-3) unless the user's file defines the hook functions
``torchdoctor_batch``, ``torchdoctor_loss`` or ``torchdoctor_optimizer`` (see
:mod:`torchdoctor.hookspecs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdoctor.findings import Finding
from torchdoctor.scriptrun.observations import ScriptRun

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchdoctor.engine.probe import ForwardProbe

DEFAULT_LIMIT_BATCHES = 4
DEFAULT_MAX_STEPS = 20
DEFAULT_TIMEOUT = 60.0
DEFAULT_SEED = 0
DEFAULT_TRACE_STEPS = 3
#: ``TrainingSetup.source`` of the parts captured from the script run itself
SCRIPT_SOURCE = "script"


@dataclass(frozen=True)
class CheckOptions:
    """Options shared by every check. The CLI flags and pytest settings of the same
    meaning are built from :data:`torchdoctor.engine.runoptions.RUN_OPTIONS`."""

    device: str = "cpu"
    seed: int = DEFAULT_SEED
    limit_batches: int = DEFAULT_LIMIT_BATCHES
    max_steps: int = DEFAULT_MAX_STEPS
    timeout: float = DEFAULT_TIMEOUT
    data_root: str | None = None
    verbose: bool = False
    #: command-line arguments given to a script target (its sys.argv[1:])
    script_args: tuple[str, ...] = ()
    #: optimizer steps of a script run traced op by op (the numerics and broadcasting
    #: rules); 0 turns the op tracer off
    trace_steps: int = DEFAULT_TRACE_STEPS
    #: optimizer steps skipped past ``max_steps`` before the run stops; None: never (the
    #: checks: the program runs to its end), 0: stop right after them (``profile --steps``)
    skipped_steps: int | None = None
    #: script mode on a machine without a GPU: ``auto`` (emulate one when CUDA is not
    #: available), ``on`` or ``off`` (see :mod:`torchdoctor.scriptrun.gpuemu`)
    gpu_emulation: str = "auto"


@dataclass
class ModelCandidate:
    """A model found in the target. ``build`` returns a *new* module each call (a deep
    copy of what the user built, or a fresh construction), so checks can train it."""

    name: str
    origin: str
    build: Callable[[], nn.Module]
    #: this model's own training setup (a synthetic batch and loss inferred from it, see
    #: :mod:`torchdoctor.synth`); None: the context's setup
    setup: TrainingSetup | None = None
    #: the parameter count, when known without building a copy
    parameters: int | None = None
    #: its index among the models the script run observed (None: not run by the script)
    observed: int | None = None
    #: why the script's own training setup is not used for it ("" when it is, or none)
    setup_note: str = ""

    @classmethod
    def from_instance(cls, name: str, origin: str, model: nn.Module,
                      observed: int | None = None) -> ModelCandidate:
        """A candidate whose copies are deep copies of ``model`` as it is now (the
        snapshot is taken here, so later training of the user's object is not seen)."""
        from torchdoctor.tensors import deepcopy_module

        snapshot = deepcopy_module(model)
        return cls(name, origin, lambda: deepcopy_module(snapshot),
                   parameters=sum(p.numel() for p in model.parameters()), observed=observed)


@dataclass
class TrainingSetup:
    """How model-mode checks train a copy: batch, loss and optimizer factories.

    ``source`` says where each came from (``reference`` or ``torchdoctor_batch()``...)
    so findings can name the user's hook when theirs is at fault.
    """

    make_batch: Callable[[], tuple[Any, Any]]
    make_loss: Callable[[], Callable[..., torch.Tensor]]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    data: str = "synthetic"
    source: dict[str, str] = field(default_factory=dict)
    #: builds the optimizer from the model itself (param groups by parameter name);
    #: when set, :meth:`optimizer_for` uses it instead of ``make_optimizer``
    make_optimizer_for: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    #: how the report names this setup ("" : derived from ``source``)
    description: str = ""
    #: its optimizer and loss in a few words, for findings (``SGD(lr=0.01), MSELoss``)
    summary: str = ""
    #: the user's line behind the setup (where the script built its optimizer)
    origin: str = ""

    def user_gave(self, what: str) -> bool:
        """Whether the user gave the ``batch``/``loss``/``optimizer`` (a hook, an
        argument), rather than torchdoctor choosing it (reference or synthetic) or
        taking it from the script run (whose own observations already tell more)."""
        return self.source.get(what, "reference") not in ("reference", "synthetic",
                                                          SCRIPT_SOURCE)

    @property
    def from_script(self) -> bool:
        """Whether this is the script's own setup (optimizer, loss and batch)."""
        return self.source.get("optimizer") == SCRIPT_SOURCE

    def optimizer_for(self, model: nn.Module) -> torch.optim.Optimizer:
        """A fresh optimizer over ``model``'s parameters."""
        if self.make_optimizer_for is not None:
            return self.make_optimizer_for(model)
        return self.make_optimizer(model.parameters())

    def batch(self, device: str | torch.device) -> tuple[Any, Any]:
        """A fresh (inputs, targets) batch moved to ``device``."""
        from torchdoctor.tensors import to_device

        inputs, targets = self.make_batch()
        return to_device(inputs, device), to_device(targets, device)


@dataclass
class CheckContext:
    """Everything a check may read. Checks must not modify ``run`` or ``models``."""

    target: str
    options: CheckOptions
    setup: TrainingSetup | None = None
    run: ScriptRun | None = None
    models: list[ModelCandidate] = field(default_factory=list)
    #: the finding that explains the crash which ended the script (at most one, from
    #: the first check whose ``explain_crash`` recognised it); each check reports its own
    crash_explanations: list[Finding] = field(default_factory=list)
    #: forward probes by candidate (see :meth:`forward_probe`)
    _probes: dict[int, ForwardProbe] = field(default_factory=dict, repr=False, compare=False)
    #: why models found are not in ``models`` (no input could be inferred, too large)
    model_skip: str = ""
    #: every model found, also those model mode cannot train (no setup): their
    #: structure (the last layer, registered buffers) is still evidence for script mode
    found_models: list[ModelCandidate] = field(default_factory=list)

    @property
    def modes(self) -> frozenset[str]:
        """Which inputs are available: "script" when the file was run, "model" when
        models were found."""
        available = set()
        if self.run is not None:
            available.add("script")
        if self.models and self.setup is not None:
            available.add("model")
        return frozenset(available)

    def fresh_model(self, candidate: ModelCandidate) -> nn.Module:
        """A new copy of ``candidate`` on the check device, in training mode."""
        from torchdoctor.tensors import set_training

        model = candidate.build()
        model.to(self.options.device)
        set_training(model)
        return model

    def forward_probe(self, candidate: ModelCandidate) -> ForwardProbe:
        """One traced forward of a copy of ``candidate`` on the setup's batch, run the
        first time a check asks and shared by every check after it (see
        :mod:`torchdoctor.engine.probe`). Treat it as read-only."""
        from torchdoctor.engine.probe import run_probe

        key = id(candidate)
        if key not in self._probes:
            self._probes[key] = run_probe(
                lambda: self.fresh_model(candidate),
                lambda: self.training_setup(candidate).batch(self.options.device),
                self.options.seed)
        return self._probes[key]

    def training_setup(self, candidate: ModelCandidate | None = None) -> TrainingSetup:
        """The setup to train ``candidate`` with (its own, else the context's), or an
        error if the context has none (script-only contexts)."""
        if candidate is not None and candidate.setup is not None:
            return candidate.setup
        if self.setup is None:
            raise RuntimeError("this context has no training setup (no model mode)")
        return self.setup
