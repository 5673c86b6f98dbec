"""The figures :func:`torchdoctor.watch` keeps on the device between two reads.

Each optimizer step adds a few kernels and no host synchronisation: the per-parameter
gradient norms come from one fused ``torch._foreach_norm`` call, the per-group norms
are written into a preallocated ``(every, groups)`` buffer, losses are summed into a
per-step buffer. Every ``every`` steps :meth:`DeviceStats.collect` packs all of it into
one tensor (all-reduced across ranks under torch.distributed) and reads it with one
``tolist()`` call. Nothing here holds a tensor of the user's past the current step,
except the parameter snapshot of an update-ratio step, dropped after that step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

F64 = torch.float64


@dataclass(frozen=True)
class ParamLayout:
    """The trainable parameters of the optimizer, in group order, with their names and
    the slice of each group (``bounds``) and its label (``group 0`` or its "name")."""

    params: list[torch.Tensor]
    names: list[str]
    bounds: list[tuple[int, int]]
    labels: list[str]

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, names: dict[int, str]) -> ParamLayout:
        """The layout of ``optimizer``'s groups; ``names`` maps ``id(param)`` to a name."""
        params: list[torch.Tensor] = []
        bounds, labels = [], []
        for index, group in enumerate(optimizer.param_groups):
            start = len(params)
            params.extend(p for p in group["params"] if p.requires_grad)
            bounds.append((start, len(params)))
            label = group.get("name")
            labels.append(label if isinstance(label, str) else f"group {index}")
        named = [names.get(id(p), f"param{i}{tuple(p.shape)}") for i, p in enumerate(params)]
        return cls(params, named, bounds, labels)


@dataclass
class Window:
    """The figures of the steps since the last read, on the host.

    ``grad_norms[i][g]``: norm of group g's gradient at step ``first_step + i``
    (1-based). ``losses[i]``: mean loss observed before that step (None: none seen);
    a final read may carry one more loss than steps (a forward after the last step).
    ``param_norms``: per-parameter gradient norms of the latest step. ``peak``: the
    largest gradient norm each parameter had so far (None once all were non-zero).
    """

    first_step: int
    grad_norms: list[list[float]]
    losses: list[float | None]
    param_norms: list[float]
    peak: list[float] | None
    #: update/weight ratios measured in the window: (step, one ratio per group)
    ratios: list[tuple[int, list[float]]]
    world: int = 1
    #: whether this rank's own figures were finite (before the all-reduce)
    local_finite: bool = True


class DeviceStats:
    """Device buffers for the steps of one window (``every`` steps)."""

    def __init__(self, layout: ParamLayout, every: int, device: torch.device) -> None:
        self.layout = layout
        self.every = every
        self.device = device
        groups = len(layout.bounds)
        self.grad_norms = torch.zeros(every, groups, dtype=F64, device=device)
        # views made once, so a step writes into its cell without an indexing op
        self._cells = [list(row.unbind(0)) for row in self.grad_norms.unbind(0)]
        self.loss_sum = torch.zeros(every + 1, dtype=F64, device=device)
        self._loss_cells = list(self.loss_sum.unbind(0))
        self.loss_count = [0] * (every + 1)
        self.filled = 0
        self.last_norms: torch.Tensor | None = None
        self.peak: torch.Tensor | None = None
        self.track_peak = True
        # at most every + 1 measurements fall between two reads
        self.ratios = torch.zeros(every + 1, groups, dtype=F64, device=device)
        self.ratio_steps: list[int] = []
        self._snapshot: list[torch.Tensor] | None = None
        self._zero = torch.zeros((), device=device)
        self._multi_device = any(p.device != device for p in layout.params)
        self._norm_dtype = torch.promote_types(
            torch.float32, *(p.dtype for p in layout.params[:1])) if layout.params \
            else torch.float32

    # -- per step ---------------------------------------------------------------------
    def record_grads(self) -> None:
        """Record this step's gradient norms in the next slot (no host sync)."""
        flat = self._param_norms([p.grad for p in self.layout.params])
        cells = self._cells[self.filled]
        whole = len(self.layout.params)
        for group, (start, stop) in enumerate(self.layout.bounds):
            part = flat if (start, stop) == (0, whole) else flat[start:stop]
            torch.linalg.vector_norm(part, dtype=F64, out=cells[group])
        if self.track_peak:
            self.peak = flat.clone() if self.peak is None else torch.maximum(self.peak, flat)
        self.last_norms = flat
        self.filled += 1

    def _param_norms(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """Per-tensor L2 norms in one fused call (a missing tensor counts as zero)."""
        present = [t if t is not None else self._zero for t in tensors]
        if not present:
            return torch.zeros(0, device=self.device)
        norms = list(torch._foreach_norm(present, 2, dtype=self._norm_dtype))
        if self._multi_device:
            norms = [n.to(self.device) for n in norms]
        return torch.stack(norms)

    def finite_now(self) -> bool:
        """Whether the latest step's gradients and loss are finite (a NaN/inf in any
        gradient makes its group's norm NaN/inf). Reads numbers from the device: meant
        for the CPU, where that costs no synchronisation."""
        slot = self.filled - 1
        total = sum(float(cell) for cell in self._cells[slot])
        return math.isfinite(total + float(self._loss_cells[slot]))

    def loss_nonfinite_now(self) -> bool:
        """Whether the loss observed before the latest step is NaN/inf."""
        return not math.isfinite(float(self._loss_cells[self.filled - 1]))

    def record_loss(self, loss: torch.Tensor | float) -> None:
        """Add a loss to the upcoming step's slot (no host sync)."""
        slot = min(self.filled, self.every)
        if isinstance(loss, torch.Tensor):
            value = loss.detach()
            if value.dim() != 0 or value.device != self.device:  # the usual loss skips this
                value = value.float().mean().to(self.device, non_blocking=True)
            self._loss_cells[slot].add_(value)
        else:
            self._loss_cells[slot].add_(float(loss))
        self.loss_count[slot] += 1

    # -- update ratio -----------------------------------------------------------------
    def snapshot(self) -> None:
        """Copy the parameters before a step (one fused kernel) for :meth:`update_ratio`."""
        with torch.no_grad():
            self._snapshot = list(torch._foreach_mul(self.layout.params, 1.0))

    def update_ratio(self, step: int) -> None:
        """After the step: ||w_after - w_before|| / ||w_after|| per group, on the device."""
        if self._snapshot is None:
            return
        snapshot, self._snapshot = self._snapshot, None
        with torch.no_grad():
            torch._foreach_sub_(snapshot, self.layout.params)  # in place: no second copy
            delta = self._param_norms(list(snapshot))
            weight = self._param_norms(list(self.layout.params))
        groups = [(torch.linalg.vector_norm(delta[a:b], dtype=F64),
                   torch.linalg.vector_norm(weight[a:b], dtype=F64))
                  for a, b in self.layout.bounds]
        self.ratios[len(self.ratio_steps)].copy_(torch.stack([d / w for d, w in groups]))
        self.ratio_steps.append(step)

    # -- reading ----------------------------------------------------------------------
    def collect(self, first_step: int, reduce: Callable[[torch.Tensor], int] | None,
                final: bool) -> Window:
        """Read the window (one host sync; ``reduce`` all-reduces the packed figures
        across ranks and returns the world size) and start a new one."""
        steps = self.filled
        losses = steps + 1 if final else steps
        parts, sizes = self._pack(steps, losses)
        packed = torch.cat(parts)
        # one more element, kept out of the reduction: are this rank's figures finite?
        packed = torch.cat([packed, torch.isfinite(packed).all().to(F64).reshape(1)])
        world = reduce(packed[:-1]) if reduce is not None else 1
        values = packed.tolist()
        window = self._unpack(values[:-1], sizes, first_step, steps, losses, world)
        window.local_finite = values[-1] == 1.0
        self._reset(carry_loss=not final)
        return window

    def _pack(self, steps: int, losses: int) -> tuple[list[torch.Tensor], list[int]]:
        counts = torch.tensor(self.loss_count[:losses], dtype=F64, device=self.device)
        pieces = [
            self.grad_norms[:steps].square().flatten(),
            self.loss_sum[:losses], counts,
            _or_empty(self.last_norms, self.device).double().square(),
            _or_empty(self.peak if self.track_peak else None, self.device).double(),
            self.ratios[:len(self.ratio_steps)].flatten(),
        ]
        return pieces, [int(p.numel()) for p in pieces]

    def _unpack(self, values: list[float], sizes: list[int], first_step: int, steps: int,
                losses: int, world: int) -> Window:
        chunks, start = [], 0
        for size in sizes:
            chunks.append(values[start:start + size])
            start += size
        squares, sums, counts, norms, peak, ratios = chunks
        groups = len(self.layout.bounds)
        grad = [[math.sqrt(v / world) if v >= 0 else v for v in squares[i:i + groups]]
                for i in range(0, steps * groups, groups)]
        mean_losses = [s / c if c else None for s, c in zip(sums, counts)]
        measured = [(step, [r / world for r in ratios[i * groups:(i + 1) * groups]])
                    for i, step in enumerate(self.ratio_steps)]
        return Window(first_step, grad, mean_losses, [math.sqrt(v / world) for v in norms],
                      peak if self.track_peak and peak else None, measured, world)

    def _reset(self, carry_loss: bool) -> None:
        carried = (self.loss_sum[self.filled].clone(), self.loss_count[self.filled]) \
            if carry_loss and self.loss_count[self.filled] else None
        self.loss_sum.zero_()
        self.loss_count = [0] * (self.every + 1)
        self.filled = 0
        self.ratio_steps = []
        if carried is not None:  # losses seen after the last step belong to the next
            self._loss_cells[0].copy_(carried[0])
            self.loss_count[0] = carried[1]

    def stop_peak_tracking(self) -> None:
        """Every parameter has had a non-zero gradient: stop tracking the peaks."""
        self.track_peak = False
        self.peak = None

    def release(self) -> None:
        """Drop every tensor that refers to the user's parameters or gradients."""
        self._snapshot = None
        self.last_norms = None


def _or_empty(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    return tensor.flatten() if tensor is not None else torch.zeros(0, device=device)
