"""The forward probe: one traced forward pass of a copy of a model candidate on the
training setup's batch, run once per candidate and shared by the checks that need it
(``shape-mismatch`` reads the module that raised, ``loss-function`` the output and the
last layer) instead of each running its own forward of its own copy.

The probe runs on a fresh copy in training mode under ``no_grad`` with a
:class:`~torchdoctor.hooks.ShapeTracer` on, seeded with the run's seed inside its own
saved state, so its result does not depend on which check asked first and the asking
check's RNG stream is untouched. An exception of the forward is kept, not raised: a
model that does not run on the batch is a finding, not a crash of the doctor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchdoctor.errors import UserCodeError, user_code

if TYPE_CHECKING:
    from torch import nn

    from torchdoctor.hooks.shapes import ShapeRecord
    from torchdoctor.scriptrun.observations import ModuleCall, ModuleInfo


@dataclass
class ForwardProbe:
    """What one forward of a copy on the setup's batch showed.

    ``model`` is the copy that ran (a forward in training mode may have moved its
    BatchNorm statistics: read it, do not train it). ``output`` is what the model
    returned (None when it raised: then ``error`` holds the exception and ``failed_at``
    the innermost module that was running); ``calls`` are the traced module calls;
    ``last_leaf`` the last leaf module that ran (the layer that produced the output,
    when the forward ends in a module)."""

    model: nn.Module
    inputs: Any
    targets: Any
    output: Any = None
    error: BaseException | None = None
    failed_at: ModuleCall | None = None
    calls: list[ShapeRecord] = field(default_factory=list)
    last_leaf: ModuleInfo | None = None

    @property
    def ran(self) -> bool:
        """Whether the forward returned."""
        return self.error is None


def run_probe(fresh_model: Callable[[], nn.Module], batch: Callable[[], tuple[Any, Any]],
              seed: int) -> ForwardProbe:
    """One traced ``no_grad`` forward of ``fresh_model()`` (a copy of a candidate) on
    ``batch()`` (the setup's inputs and targets), under the state ``seed`` gives (use
    :meth:`CheckContext.forward_probe`, which caches it; this module takes callables,
    not the context, so that the context may depend on it and not the other way)."""
    import torch

    from torchdoctor.engine.state import preserved_state
    from torchdoctor.hooks import ShapeTracer
    from torchdoctor.tensors import forward

    with preserved_state(seed):
        model = fresh_model()
        inputs, targets = batch()
        probe = ForwardProbe(model, inputs, targets)
        tracer = ShapeTracer(model)
        with torch.no_grad():
            try:
                with tracer, user_code():
                    probe.output = forward(model, inputs)
            except UserCodeError as raised:  # the user's model does not run on this batch
                probe.error, probe.failed_at = raised.error, tracer.failed_at
        probe.calls = list(tracer.records)
        probe.last_leaf = _last_leaf(model, probe.calls)
    return probe


def _last_leaf(model: nn.Module, calls: list[ShapeRecord]) -> ModuleInfo | None:
    """The last leaf module (one without children) that ran; calls are numbered when
    they start, and a leaf finishes before the next call starts."""
    leaves = {name for name, module in model.named_modules()
              if not any(True for _ in module.children())}
    ran = [call for call in calls if call.qualname in leaves and not call.raised]
    return ran[-1].module if ran else None
