"""What to change: advice from a profile's phase shares, loader settings and device."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from torchdoctor.profiling.base import PHASES, is_cuda

if TYPE_CHECKING:
    from torchdoctor.profiling.report import ProfileReport

#: advice thresholds, as shares of the profiled wall time
DATA_BOUND = 0.35
COMPUTE_BOUND = 0.6
OPTIMIZER_HEAVY = 0.3
OTHER_HEAVY = 0.3
#: below this fraction of compute time with a kernel running, a GPU step is overhead-bound
DEVICE_IDLE = 0.5


def advise(report: ProfileReport) -> list[str]:
    """What to change, from the phase shares, the loader settings and the device."""
    rules = (_data_advice, _compute_advice, _optimizer_advice, _device_idle_advice,
             _other_advice)
    return [text for rule in rules if (text := rule(report))]


def _data_advice(report: ProfileReport) -> str | None:
    share = report.shares["data"]
    if share < DATA_BOUND:
        return None
    workers = report.loader.num_workers
    cores = os.cpu_count() or 1
    if workers:
        fix = (f"num_workers={workers} is not enough: raise it (this machine has {cores} "
               "CPU cores) or make each sample cheaper (cache decoded data, apply "
               "augmentation per batch)")
    else:
        fix = (f"Load in parallel with DataLoader(..., num_workers={min(8, max(2, cores))}, "
               "persistent_workers=True), and make each sample cheaper if __getitem__ "
               "decodes or transforms (cache it)")
    if is_cuda(report.device) and not report.loader.pin_memory:
        fix += "; add pin_memory=True and copy with .to(device, non_blocking=True)"
    return f"Data loading takes {share:.0%} of the step time: the model waits for batches. " \
           f"{fix}."


def _compute_advice(report: ProfileReport) -> str | None:
    shares = report.shares
    share = shares["forward"] + shares["backward"]
    if share < COMPUTE_BOUND:
        return None
    if is_cuda(report.device):
        return (f"Forward and backward take {share:.0%} of the step: compute-bound on the "
                "GPU. Use mixed precision: run forward and loss under "
                "torch.autocast('cuda', dtype=torch.bfloat16) (float16 also needs "
                "torch.amp.GradScaler), and torch.set_float32_matmul_precision('high').")
    return (f"Forward and backward take {share:.0%} of the step: the model's arithmetic is "
            "the cost, not the data pipeline. A GPU (--device cuda) helps most; on CPU, "
            "torch.compile(model) can fuse small operators.")


def _optimizer_advice(report: ProfileReport) -> str | None:
    share = report.shares["step"]
    if share < OPTIMIZER_HEAVY:
        return None
    batch = report.loader.batch_size
    size = f"a batch of {batch}" if batch else "the batch"
    return (f"optimizer.step takes {share:.0%} of the step. Its cost does not grow with the "
            f"batch, so {size} is too small to amortise it: try a batch 4x larger (scale the "
            "learning rate with it), or a foreach/fused optimizer (Adam(..., foreach=True); "
            "fused=True on GPU).")


def _device_idle_advice(report: ProfileReport) -> str | None:
    if report.device_seconds is None:
        return None
    compute = sum(report.phase_seconds.get(p, 0.0) for p in ("forward", "backward", "step"))
    if compute <= 0 or report.device_seconds / compute >= DEVICE_IDLE:
        return None
    busy = report.device_seconds / compute
    return (f"The GPU runs kernels only {busy:.0%} of the compute time: the step is bound "
            "by per-step CPU overhead (Python, kernel launches). Use a larger batch, "
            "torch.compile(model), or CUDA graphs.")


def _other_advice(report: ProfileReport) -> str | None:
    share = report.shares["other"]
    if share < OTHER_HEAVY or not any(report.phase_seconds.get(p) for p in PHASES[:-1]):
        return None
    if report.kind == "script":  # a script's "other" holds its one-off start-up too
        return (f"{share:.0%} of the run goes outside data loading, forward, backward and "
                "optimizer step. Part is start-up (imports, building datasets and the model), "
                "which a short profiled run exaggerates; if the rest recurs every step "
                "(.item()/print, evaluation, checkpointing), do it every N steps instead.")
    return (f"{share:.0%} of the time goes outside data loading, forward, backward and "
            "optimizer step (evaluation, logging, .item()/print every step, "
            "checkpointing): do that every N steps rather than every step.")


__all__ = ["COMPUTE_BOUND", "DATA_BOUND", "DEVICE_IDLE", "OPTIMIZER_HEAVY", "OTHER_HEAVY",
           "advise"]
