"""Profile a step function: :func:`profile_loop` splits the phases by itself, with
temporary global module and optimizer hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Any

from torchdoctor.errors import UsageError
from torchdoctor.profiling.base import DEFAULT_TOP, check_count
from torchdoctor.profiling.report import ProfileReport
from torchdoctor.profiling.timing import PhaseClock, StepProfiler


class AutoPhases:
    """Temporary global hooks that switch the clock to "forward" during the outermost
    module call and to "step" during ``optimizer.step``, when the clock is in ``body``.
    Removed on exit."""

    def __init__(self, clock: PhaseClock, body: str) -> None:
        self._clock = clock
        self._body = body
        self._entered: list[bool] = []
        self._stack = ExitStack()

    def __enter__(self) -> AutoPhases:
        from torch.nn.modules import module
        from torch.optim import optimizer

        handles = [
            module.register_module_forward_pre_hook(self._pre),
            module.register_module_forward_hook(self._post, always_call=True),
            optimizer.register_optimizer_step_pre_hook(self._pre),
            optimizer.register_optimizer_step_post_hook(self._post),
        ]
        for handle in handles:
            self._stack.callback(handle.remove)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _pre(self, owner: Any, *_: Any) -> None:
        # a module's forward or an optimizer's step starts; only the outermost one counts
        enter = self._clock.current == self._body
        self._entered.append(enter)
        if enter:
            self._clock.enter("step" if _is_optimizer(owner) else "forward")

    def _post(self, owner: Any, *_: Any) -> None:
        if self._entered and self._entered.pop():
            self._clock.leave()


def _is_optimizer(owner: Any) -> bool:
    from torch.optim import Optimizer

    return isinstance(owner, Optimizer)


def profile_loop(step_fn: Callable[[Any], Any], loader: Iterable[Any], *, steps: int = 20,
                 warmup: int = 1, device: str = "cpu", trace: str | None = None,
                 top: int = DEFAULT_TOP, target: str = "training loop") -> ProfileReport:
    """Profile ``steps`` calls of ``step_fn(batch)`` (one training step) over ``loader``.

    The loader is iterated again when it runs out. ``warmup`` steps run first, unprofiled
    (optimizer state and allocator caches are built there). The split is automatic:
    fetching a batch is ``data``; inside ``step_fn`` the outermost module calls (model and
    loss modules) are ``forward``, ``optimizer.step`` is ``step``, and the rest (backward,
    functional losses, zero_grad) is ``backward``.
    """
    check_count("steps", steps, 1)
    check_count("warmup", warmup, 0)
    batches = cycle(loader)
    for _ in range(warmup):
        step_fn(next(batches))
    with StepProfiler(target=target, device=device, trace=trace, top=top,
                      loader=loader) as prof:
        with AutoPhases(prof._running_clock(), body="backward"):
            for batch in prof.batches(batches, steps):
                with prof.phase("backward"):
                    step_fn(batch)
    return prof.report()


def cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """The loader's batches, epoch after epoch; an epoch with no batch is an error."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UsageError("the loader yielded no batch")


__all__ = ["AutoPhases", "cycle", "profile_loop"]
