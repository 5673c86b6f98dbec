"""Choosing the training setup of one model for model mode.

In order: the user's batch (``torchdoctor_batch()``, ``diagnose_model(batch=...)``)
always wins; the FashionMNIST reference when the model takes it and returns at least 10
class scores per sample; else the first synthetic input from
:func:`~torchdoctor.synth.specs.candidate_specs` that runs through a copy of the model,
with the task :func:`~torchdoctor.synth.task.make_task` derives from its output.

The reference is kept too for a model whose first layer is a Linear over 784
(= 1x28x28) features: FashionMNIST is its data, and a failure on it (a forgotten
flatten) a real one. When nothing runs all the way, a batch that got past the model's
first layer is kept, the reference first (the model itself fails later: shape-mismatch
names the layer); when nothing gets that
far, no setup: model mode is skipped with the reason. A model too large for the time
budget is skipped too, with its size and time per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchdoctor.synth.specs import InputSpec, candidate_specs
from torchdoctor.synth.task import main_output, make_task
from torchdoctor.tensors import one_cpu_thread, set_training, to_device

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckOptions, ModelCandidate, TrainingSetup

#: above this many parameters a model is not trained on the CPU (minutes per check)
MAX_CPU_PARAMETERS = 100_000_000
#: a training step (about 3 forwards) may take at most this share of --timeout
STEP_SHARE = 1 / 20
#: the FashionMNIST reference fits a model that returns this many class scores or more
REFERENCE_CLASSES = 10
#: a first Linear over this many features is fed flattened FashionMNIST images
REFERENCE_FEATURES = 28 * 28

BATCH_HOOK = "define torchdoctor_batch() (and torchdoctor_loss()) in the file"


@dataclass
class Choice:
    """The setup for one candidate, or why there is none."""

    setup: TrainingSetup | None
    reason: str = ""


@dataclass
class _Probe:
    """One forward of a copy on some inputs."""

    inputs: Any
    output: Any = None
    error: BaseException | None = None
    #: whether a layer with parameters finished before the error (the input was right)
    progressed: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and main_output(self.output) is not None


def choose_setup(candidate: ModelCandidate, base: TrainingSetup,
                 options: CheckOptions) -> Choice:
    """The setup model-mode checks should train ``candidate`` with (see module doc)."""
    if base.user_gave("batch") or base.user_gave("loss"):
        return Choice(base)  # the user's own batch or loss: theirs, never second-guessed
    if candidate.parameters is not None and _too_large(candidate.parameters, options):
        return Choice(None, f"{candidate.name} {_too_large(candidate.parameters, options)}")
    built = candidate.build()
    if on_meta(built):
        return Choice(None, f"{candidate.name} {ON_META}")
    model = set_training(built.to(options.device))  # not a train() override
    too_large = _too_large(sum(p.numel() for p in model.parameters()), options)
    if too_large:
        return Choice(None, f"{candidate.name} {too_large}")
    reference = _probe(model, base.batch(options.device)[0])
    if reference.ok and _takes_reference(reference.output):
        return _timed(candidate, model, Choice(base), reference, options)
    if _flat_images(model):
        return Choice(base)  # 784 = 1x28x28 features: a forgotten flatten is the bug
    tried: list[InputSpec] = []
    furthest: tuple[InputSpec, _Probe] | None = None
    for spec in candidate_specs(model):
        found = _probe(model, to_device(spec.make(options.seed), options.device))
        tried.append(spec)
        if found.ok:
            return _timed(candidate, model, _synthetic(base, spec, found, options), found,
                          options)
        if found.progressed and furthest is None:
            furthest = (spec, found)
    if reference.progressed:
        return Choice(base)  # FashionMNIST got past its first layer: the model fails later
    if furthest is not None:
        return Choice(_failing(base, *furthest, options))
    names = "; ".join(s.description for s in tried[:6]) or "no layer says what it takes"
    return Choice(None, f"no input could be inferred for {candidate.name} (tried: {names}); "
                        f"{BATCH_HOOK}")


def _flat_images(model: nn.Module) -> bool:
    """Whether the first layer is a Linear over 1x28x28 = 784 features (an MNIST-style
    model: fed FashionMNIST images, a missing flatten is the bug to report)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)
                  or isinstance(m, nn.modules.conv._ConvNd)), None)
    return isinstance(first, nn.Linear) and first.in_features == REFERENCE_FEATURES


#: why a model whose parameters are on the ``meta`` device is left out of model mode
ON_META = "has its parameters on the meta device (shapes, no data): nothing to train"


def on_meta(model: nn.Module) -> bool:
    """Whether some parameter or buffer of ``model`` is on the ``meta`` device (a copy
    cannot be moved to a device, let alone trained: "Cannot copy out of meta tensor")."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _too_large(count: int, options: CheckOptions) -> str:
    """Why a model of ``count`` parameters is not trained here, or ""."""
    if options.device.startswith("cpu") and count > MAX_CPU_PARAMETERS:
        return (f"is too large for model mode on the CPU ({count / 1e6:.0f}M parameters, "
                f"limit {MAX_CPU_PARAMETERS / 1e6:.0f}M): check it with --device cuda")
    return ""


def _timed(candidate: ModelCandidate, model: nn.Module, choice: Choice, probe: _Probe,
           options: CheckOptions) -> Choice:
    """``choice``, or a skip when one training step would eat the time budget."""
    if 3 * probe.seconds > options.timeout * STEP_SHARE:
        probe = _probe(model, probe.inputs)  # the first call pays one-off set-up costs
    step = 3 * probe.seconds  # forward + backward + update
    limit = options.timeout * STEP_SHARE
    if step <= limit:
        return choice
    what = choice.setup.data if choice.setup is not None else "its batch"
    return Choice(None, f"{candidate.name} is too large for model mode's time budget "
                        f"(~{step:.1f} s per training step on {options.device} with "
                        f"{what}; limit "
                        f"{limit:.1f} s = --timeout/20): raise --timeout, use --device "
                        f"cuda, or {BATCH_HOOK} with a smaller batch")


def _takes_reference(output: Any) -> bool:
    """Whether the output is (B, >= 10) class scores for the reference batch."""
    tensor = main_output(output)
    return tensor is not None and tensor.dim() == 2 and \
        tensor.shape[1] >= REFERENCE_CLASSES and isinstance(output, torch.Tensor)


def _probe(model: nn.Module, inputs: Any) -> _Probe:
    """Run ``inputs`` through ``model`` without autograd, noting whether a layer with
    parameters finished (then the input suited the model's first layer)."""
    from torchdoctor.reference.trainer import forward

    probe = _Probe(inputs)

    def finished(*_: Any) -> None:
        probe.progressed = True

    handles = [m.register_forward_hook(finished) for m in model.modules()
               if next(m.parameters(recurse=False), None) is not None]
    started = time.perf_counter()
    try:
        with torch.no_grad(), one_cpu_thread(str(inputs_device(inputs))):
            probe.output = forward(model, inputs)
    except Exception as exc:  # the user's model rejecting a guessed input: try the next
        probe.error = exc
    finally:
        probe.seconds = time.perf_counter() - started
        for handle in handles:
            handle.remove()
    return probe


def inputs_device(inputs: Any) -> torch.device:
    """The device of the first input tensor."""
    first = inputs[0] if isinstance(inputs, tuple) else inputs
    return first.device if isinstance(first, torch.Tensor) else torch.device("cpu")


def _synthetic(base: TrainingSetup, spec: InputSpec, probe: _Probe,
               options: CheckOptions) -> Choice:
    from torchdoctor.engine.context import TrainingSetup

    inputs = spec.make(options.seed)
    task = make_task(inputs, to_device(probe.output, "cpu"), options.seed)
    targets = task.targets
    return Choice(TrainingSetup(
        make_batch=lambda: (_clone(inputs), targets.clone()),
        make_loss=task.make_loss, make_optimizer=base.make_optimizer,
        data=f"synthetic (inferred: {spec.description}, {task.description})",
        source={**base.source, "batch": "synthetic", "loss": "synthetic"}))


def _failing(base: TrainingSetup, spec: InputSpec, probe: _Probe,
             options: CheckOptions) -> TrainingSetup:
    """A setup whose inputs fit the first layer of a model that fails further on, so
    the checks see (and shape-mismatch names) the failure."""
    from torchdoctor.engine.context import TrainingSetup

    inputs = spec.make(options.seed)
    targets = torch.zeros(spec.tensors[0].shape[0], dtype=torch.long)
    return TrainingSetup(
        make_batch=lambda: (_clone(inputs), targets.clone()),
        make_loss=nn.CrossEntropyLoss, make_optimizer=base.make_optimizer,
        data=f"synthetic (inferred: {spec.description}; the model fails on it)",
        source={**base.source, "batch": "synthetic", "loss": "synthetic"})


def _clone(inputs: Any) -> Any:
    if isinstance(inputs, tuple):
        return tuple(t.clone() for t in inputs)
    return inputs.clone()
