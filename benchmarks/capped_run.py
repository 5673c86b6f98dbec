"""Run a training script under torchdoctor's fast-dev-run caps and nothing else: the
baseline `torchdoctor check` is measured against in ``bench_check.py``.

The same :class:`~torchdoctor.scriptrun.budget.RunBudget` a script-mode run applies
(batches per DataLoader pass, later passes of a loader, optimizer steps applied or
skipped, the safety caps) limits the script, with no observation at all: the difference
between this and `torchdoctor check` is what the doctor itself costs. torch and
torchvision are imported first, as every `torchdoctor check` of a torchvision program
pays them.

    python benchmarks/capped_run.py examples/fashion_mnist_lab.py [ARGS...]
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

import torch
import torchvision  # noqa: F401  (the import cost every torch program of this kind pays)
from torch.optim import optimizer as optimizer_hooks
from torch.utils.data import DataLoader

from torchdoctor.engine.context import CheckOptions
from torchdoctor.scriptrun.budget import LimitedIterator, RunBudget, StopRun


def run_capped(path: str, argv: list[str], options: CheckOptions) -> None:
    """Run ``path`` as ``__main__`` with ``argv`` under the caps of ``options``."""
    budget = RunBudget(options.limit_batches, options.max_steps, lambda optimizer: None)
    original_iter, original_backward = DataLoader.__iter__, torch.Tensor.backward

    def capped_iter(loader: DataLoader) -> Any:
        allowance = budget.start_pass(loader)
        return LimitedIterator(original_iter(loader), allowance,
                               lambda started: budget.fetched(),
                               lambda capped: budget.end_pass(allowance))

    def counted_backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        result = original_backward(tensor, *args, **kwargs)
        budget.after_backward()
        return result

    handle = optimizer_hooks.register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: budget.after_step(optimizer))
    DataLoader.__iter__ = capped_iter  # type: ignore[method-assign,assignment]
    torch.Tensor.backward = counted_backward  # type: ignore[method-assign]
    sys.argv = [path, *argv]
    try:
        runpy.run_path(path, run_name="__main__")
    except StopRun as stop:
        print(f"capped_run: cut: {stop.reason}", file=sys.stderr)
    finally:
        handle.remove()
        budget.restore()
        DataLoader.__iter__ = original_iter  # type: ignore[method-assign]
        torch.Tensor.backward = original_backward  # type: ignore[method-assign]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: capped_run.py SCRIPT [ARGS...]")
    run_capped(sys.argv[1], sys.argv[2:], CheckOptions())
