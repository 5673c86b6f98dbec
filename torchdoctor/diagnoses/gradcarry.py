"""Detects gradients carried over from one optimizer step into the next (a missing or
misdirected ``zero_grad``), without flagging legitimate gradient accumulation.

The idea: after ``optimizer.step()``, a correct loop clears the gradients of that
optimizer's parameters before the next backward pass adds to them. A gradient hook on
each parameter runs just *before* the new gradient is accumulated into ``.grad``; the
first such call after a step looks at ``.grad``. If it is still non-zero, the old
gradient is about to be summed with the new one: that is the bug. Several backward
passes between two steps (accumulation) are fine, because only the first gradient
after a step is looked at, and by then ``zero_grad`` has run.

With ``confirm_at_step=True`` (the script instrument) a carried gradient is only
recorded when it reaches the owner's next ``step()``: a GAN's generator backward adds
gradients to the discriminator's parameters after the discriminator stepped, and
``netD.zero_grad()`` clears them before they are ever used; that is not a bug.

Used by the script-mode instrument and by :func:`torchdoctor.watch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from torchdoctor.scriptrun.observations import CarriedGradRecord, CodeLocation
from torchdoctor.tensors import stored_values


@dataclass
class _WatchedOptimizer:
    index: int
    type_name: str
    steps: int = 0
    last_step_location: CodeLocation | None = None
    #: parameters stepped but not yet given a new gradient
    pending: set[int] = field(default_factory=set)


class GradCarryDetector:
    """Watches the parameters of one or more optimizers for carried-over gradients.

    ``sync=True`` (the doctor's mode) checks each gradient as it arrives and records at
    once. ``sync=False`` (for GPU training loops) only ORs a flag on the device per
    parameter; :meth:`flush` reads the flags (one host sync) and records.
    ``name_of`` maps a parameter to a readable name (``fc1.weight``).
    """

    def __init__(self, *, sync: bool = True,
                 name_of: Callable[[torch.Tensor], str] | None = None,
                 confirm_at_step: bool = False) -> None:
        self.sync = sync
        self.confirm_at_step = confirm_at_step
        # param id -> (param, its .grad when the carry was seen, step index) awaiting
        # the owner's next step (confirm_at_step only)
        self._suspects: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self.records: list[CarriedGradRecord] = []
        self._name_of = name_of or (lambda p: f"parameter{tuple(p.shape)}")
        self._optimizers: dict[int, _WatchedOptimizer] = {}
        self._owner: dict[int, int] = {}  # id(param) -> id(optimizer)
        self._handles: list[Any] = []
        self._hooks_were_none: list[torch.Tensor] = []
        # param id -> (param, device flag, step index the carry followed)
        self._flags: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._zero_grads: list[CodeLocation] = []

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Start watching ``optimizer``'s parameters (idempotent)."""
        if id(optimizer) in self._optimizers:
            return
        state = _WatchedOptimizer(len(self._optimizers), type(optimizer).__name__)
        self._optimizers[id(optimizer)] = state
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.requires_grad and id(param) not in self._owner:
                    self._owner[id(param)] = id(optimizer)
                    if param._backward_hooks is None:
                        self._hooks_were_none.append(param)
                    self._handles.append(param.register_hook(self._make_hook(param)))

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether a watched optimizer steps ``tensor``."""
        return id(tensor) in self._owner

    def note_step(self, optimizer: torch.optim.Optimizer,
                  location: CodeLocation | None = None) -> None:
        """Call after ``optimizer.step()``: its parameters must be cleared before the
        next gradient arrives."""
        state = self._optimizers.get(id(optimizer))
        if state is None:
            return
        state.steps += 1
        state.last_step_location = location
        state.pending = {pid for pid, owner in self._owner.items() if owner == id(optimizer)}
        self._zero_grads.clear()

    def note_zero_grad(self, location: CodeLocation | None,
                       cleared: list[torch.Tensor] | None = None) -> None:
        """Record a ``zero_grad`` call (of any optimizer or module) for the message;
        ``cleared`` are the parameters it clears (their carried gradients are gone)."""
        if location is not None:
            self._zero_grads.append(location)
        for param in cleared or ():
            self._suspects.pop(id(param), None)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``confirm_at_step``: call before ``optimizer.step()``. A carried gradient
        of its parameters that is still in ``.grad`` (not cleared, not replaced) is
        about to be applied: record it."""
        owned = [pid for pid in self._suspects if self._owner.get(pid) == id(optimizer)]
        for pid in owned:
            param, grad, step_index = self._suspects.pop(pid)
            if param.grad is grad:
                self._record(param, step_index)

    def flush(self) -> None:
        """In ``sync=False`` mode: read the device flags (one sync) and record."""
        if not self._flags:
            return
        entries = list(self._flags.values())
        hits = torch.stack([flag for _, flag, _ in entries]).cpu().tolist()
        for (param, _flag, step_index), hit in zip(entries, hits):
            if hit:
                self._record(param, step_index)
        self._flags.clear()

    def close(self) -> None:
        """Remove every hook (always call; idempotent). Carried gradients never
        applied by a step (confirm_at_step) are dropped."""
        self.flush()
        self._suspects.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        # register_hook turned the parameter's hook dict from None into {}: put None back
        for param in self._hooks_were_none:
            if param._backward_hooks is not None and not param._backward_hooks:
                param._backward_hooks = None
        self._hooks_were_none.clear()

    def _make_hook(self, param: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def before_accumulate(_grad: torch.Tensor) -> None:
            owner = self._optimizers.get(self._owner.get(id(param), -1))
            if owner is None or id(param) not in owner.pending:
                return
            owner.pending.discard(id(param))
            if param.grad is None:
                return
            if self.sync:
                if bool(stored_values(param.grad).ne(0).any()):
                    self._suspect_or_record(param)
            else:
                self._flag_on_device(param)

        return before_accumulate

    def _suspect_or_record(self, param: torch.Tensor) -> None:
        if not self.confirm_at_step:
            self._record(param)
            return
        owner = self._optimizers[self._owner[id(param)]]
        assert param.grad is not None
        self._suspects[id(param)] = (param, param.grad, owner.steps)

    def _flag_on_device(self, param: torch.Tensor) -> None:
        assert param.grad is not None
        owner = self._optimizers[self._owner[id(param)]]
        carried = stored_values(param.grad).ne(0).any()
        entry = self._flags.get(id(param))
        if entry is not None:  # keep the earliest step a carry followed
            self._flags[id(param)] = (param, entry[1] | carried, entry[2])
        else:
            self._flags[id(param)] = (param, carried, owner.steps)

    def _record(self, param: torch.Tensor, step_index: int | None = None) -> None:
        owner = self._optimizers[self._owner[id(param)]]
        step_index = owner.steps if step_index is None else step_index
        name = self._name_of(param)
        last = self.records[-1] if self.records else None
        if last is not None and last.optimizer == owner.index and last.step_index == step_index:
            if name not in last.params:
                last.params.append(name)
            return
        self.records.append(CarriedGradRecord(
            optimizer=owner.index,
            optimizer_type=owner.type_name,
            step_index=step_index,
            step_location=owner.last_step_location,
            params=[name],
            zero_grad_locations=list(self._zero_grads),
        ))
