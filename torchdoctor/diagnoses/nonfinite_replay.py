"""Replaying the step where a NaN/inf appeared, with per-module hooks, to find where it
started: the one replay behind every front end.

The replay itself is :func:`torchdoctor.hooks.localize_nonfinite` (a copy of the model,
the RNG forked, a :class:`~torchdoctor.hooks.NonFiniteTracer` on; public API). It is
reached from the script instrument (:func:`replay_forward`: the forward of the step
whose loss or gradients went non-finite), from ``watch()`` (``monitor/replay.py``) and
from the ``nan-loss`` check's model mode (:func:`train_until_nonfinite`).

Per-layer hooks on every step would slow training by a third, so the cheap loop of
:func:`train_until_nonfinite` only tests finiteness; before each step it keeps a CPU
snapshot of the pre-step state of *that step only*: the buffers (a forward in training
mode moves BatchNorm statistics) and the RNG state (the replay draws the same dropout
masks). The parameters need no copy: a bad step is caught before its
``optimizer.step()``, so they still hold their pre-step values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchdoctor.diagnoses.nonfinite import Evidence, all_finite, describe_module
from torchdoctor.reference.trainer import forward
from torchdoctor.tensors import one_cpu_thread

if TYPE_CHECKING:
    from torchdoctor.engine.context import TrainingSetup
    from torchdoctor.hooks import NonFiniteHit


def replay_forward(model: nn.Module, args: tuple[Any, ...]) -> NonFiniteHit | None:
    """Run ``model(*args)`` once on a copy (RNG forked, the user's model untouched) and
    return the first module whose output was non-finite, or None (also when the replay
    itself raised: the replay is a diagnostic and must not end the user's run)."""
    from torchdoctor.hooks import localize_nonfinite

    return localize_nonfinite(model, args).first_output


#: steps a copy is trained for before it is declared free of NaN/inf
MODEL_STEPS = 30


@dataclass
class _Snapshot:
    """The buffers and RNG state just before one step (CPU copies)."""

    buffers: dict[str, torch.Tensor]
    rng: torch.Tensor
    cuda_rng: torch.Tensor | None


@dataclass
class _Step:
    """What the replay needs to re-run a step."""

    inputs: Any
    targets: Any
    loss_fn: Callable[..., torch.Tensor]


def _snapshot(model: nn.Module, device: torch.device) -> _Snapshot:
    buffers = {k: v.detach().to("cpu", copy=True) for k, v in model.named_buffers()}
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return _Snapshot(buffers, torch.get_rng_state(), cuda_rng)


@torch.no_grad()
def _restore_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    for name, buffer in model.named_buffers():
        if name in buffers:
            buffer.copy_(buffers[name])


def _lr(optimizer: torch.optim.Optimizer) -> float | None:
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    return float(lr) if lr is not None else None


def train_until_nonfinite(model: nn.Module, setup: TrainingSetup, device: str,
                          steps: int = MODEL_STEPS) -> Evidence | None:
    """Train ``model`` (a copy the caller owns) on one batch for up to ``steps`` steps;
    return the evidence about the first non-finite loss/gradient/weight, or None."""
    inputs, targets = setup.batch(device)
    if not all_finite(inputs):
        return Evidence(0, "input", inputs_finite=False)
    optimizer = setup.optimizer_for(model)
    # as the one-batch fit does: OpenMP's waiting threads made these 30 small steps take
    # seconds instead of a tenth of one on a 2-core machine with anything else running
    with one_cpu_thread(device):
        return _train(model, optimizer, _Step(inputs, targets, setup.make_loss()), steps)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, step: _Step,
           steps: int) -> Evidence | None:
    """The cheap loop: finiteness checks only, one snapshot (the current step's)."""
    base = Evidence(0, "", lr=_lr(optimizer), optimizer_type=type(optimizer).__name__)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    history: list[float] = []
    for index in range(steps):
        before = _snapshot(model, device)
        optimizer.zero_grad(set_to_none=True)
        loss = step.loss_fn(forward(model, step.inputs), step.targets)
        loss_ok = all_finite(loss)
        if loss_ok:
            loss.backward()
        if not loss_ok or not all_finite([p.grad for p in model.parameters()]):
            found = _replay(model, before, step, "gradient" if loss_ok else "loss")
            return replace(base, steps_before=index, loss_history=tuple(history), **found)
        optimizer.step()
        history.append(float(loss.detach()))
        if not all_finite(list(model.parameters())):
            name, param = _first_nonfinite_param(model)
            return replace(base, steps_before=index + 1, kind="parameter", where=name,
                           loss_history=tuple(history), dtype=str(param.dtype))
    return None


def _first_nonfinite_param(model: nn.Module) -> tuple[str, torch.Tensor]:
    return next((name, p) for name, p in model.named_parameters()
                if not bool(torch.isfinite(p.detach()).all()))


@contextmanager
def _rng_as_before(snapshot: _Snapshot, device: torch.device) -> Iterator[None]:
    """Replays with the RNG state of the original step (same dropout masks)."""
    devices = [device.index or 0] if snapshot.cuda_rng is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(snapshot.rng)
        if snapshot.cuda_rng is not None:
            torch.cuda.set_rng_state(snapshot.cuda_rng, device)
        yield


def _replay(model: nn.Module, before: _Snapshot, step: _Step, seen: str) -> dict[str, Any]:
    """Re-run the bad step with per-module hooks and anomaly mode (both only here) on a
    copy of ``model`` restored to ``before``; return the Evidence fields it found.
    ``seen`` ("loss"/"gradient") is what the cheap loop saw, kept if the replay
    does not reproduce it."""
    from torchdoctor.hooks import localize_nonfinite

    _restore_buffers(model, before.buffers)  # our own copy: back to the pre-step state
    model.zero_grad(set_to_none=True)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with _rng_as_before(before, device):
        report = localize_nonfinite(model, step.inputs, step.loss_fn, step.targets,
                                    anomaly=True)
    kind = report.kind if report.kind != "none" else seen
    return {"kind": kind, "where": _replay_where(report, kind, step.loss_fn),
            "inputs_finite": report.inputs_finite, "output_finite": report.output_finite,
            "dtype": report.output.dtype if report.output is not None else "",
            "detail": report.anomaly.splitlines()[0] if report.anomaly else ""}


def _replay_where(report: Any, kind: str, loss_fn: Callable[..., Any]) -> str:
    if kind == "activation" and report.first_output is not None:
        hit = report.first_output
        return describe_module(hit.module, made_here=hit.inputs_finite)
    if kind == "gradient" and report.first_gradient is not None:
        return str(report.first_gradient.qualname)
    if kind == "gradient" and report.backward_op:
        return f"the backward of {report.backward_op}"
    if kind == "input":
        return ""
    return f"the loss function ({getattr(loss_fn, '__name__', type(loss_fn).__name__)})"
