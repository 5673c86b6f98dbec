"""``torchdoctor.watch``: instruments for the user's own training loop, cheap enough to
leave on.

    with torchdoctor.watch(model, optimizer) as doc:
        for x, y in loader:
            optimizer.zero_grad()
            loss = doc.loss(loss_fn(model(x), y))   # optional: enables the loss monitors
            loss.backward()
            optimizer.step()
    print(doc.table())

The watch learns about steps from the optimizer's own step hooks and about forwards
from one forward pre-hook on the model (per-instance hooks, all removed on exit, also
on exceptions). Per step it adds a handful of kernels and no host synchronisation; the
figures are read every ``every`` steps (all-reduced across ranks under
torch.distributed). A non-finite loss or gradient is localised by replaying that step
on a copy of the model with per-module hooks (:func:`torchdoctor.hooks.localize_nonfinite`)
instead of keeping such hooks on every step. See docs/watch.md.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, TypeVar

import torch
from torch import nn

from torchdoctor.diagnoses.gradcarry import GradCarryDetector
from torchdoctor.diagnoses.zero_grad import carried_grad_finding
from torchdoctor.findings import Finding, Report
from torchdoctor.monitor.analysis import NonFiniteEvent, Thresholds
from torchdoctor.monitor.hooks import (
    all_reduce_sum,
    forward_hook,
    is_distributed,
    number,
    step_hook,
    unwrap,
)
from torchdoctor.monitor.modes import ModeWatch, not_in_optimizer
from torchdoctor.monitor.policy import KINDS, Policy, PolicySpec, TorchDoctorWarning
from torchdoctor.monitor.reader import WindowReader
from torchdoctor.monitor.replay import nonfinite_findings, replay
from torchdoctor.monitor.report import (
    WatchStats,
    build_report,
    skipped_reasons,
    watch_notes,
)
from torchdoctor.monitor.stats import DeviceStats, ParamLayout, Window

__all__ = ["KINDS", "Thresholds", "TorchDoctorWarning", "Watch", "WatchStats", "watch"]

#: figures are read every 20 steps (one host sync, one all_reduce under distributed);
#: on the CPU, where reading a number costs no sync, NaN/inf is also checked every step
DEFAULT_EVERY = 20

LossT = TypeVar("LossT", torch.Tensor, float)


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, *, policy: PolicySpec = None,
          every: int | None = None, update_every: int = 20,
          thresholds: Thresholds | None = None, history: int = 1000,
          distributed: bool | None = None, nan_every_step: bool | None = None,
          trace_steps: int = 0) -> Watch:
    """Start watching ``model`` trained by ``optimizer``; use as a context manager.

    ``policy``: what to do with findings besides recording them: one of ``"record"``,
    ``"warn"``, ``"raise"``, or a mapping from monitor ids (``nan-loss``,
    ``gradient-norm``...) and ``"default"`` to those. Default: warn for error findings.
    ``every``: read the figures every N steps (default 20; on the CPU a NaN/inf is
    caught at the step where it appears regardless). ``update_every``: measure the
    update/weight ratio every N steps (0: never). ``thresholds``: when figures become
    findings. ``history``: how many steps of figures ``doc.stats`` keeps.
    ``distributed``: all-reduce the figures across ranks (default: when
    torch.distributed is initialised with more than one rank). ``nan_every_step``:
    check for NaN/inf at every step, so it is raised and localised at the step where it
    appears (default: on the CPU only; on an accelerator it costs a host sync per step).
    ``trace_steps``: trace the tensor ops of the first N steps (and of the first
    evaluation forwards) for numerically unsafe expressions (``numerics``) and
    prediction/target broadcasts (``shape-mismatch``); reported when the watch stops.
    """
    doc = Watch(model, optimizer, policy=policy, every=every, update_every=update_every,
                thresholds=thresholds, history=history, distributed=distributed,
                nan_every_step=nan_every_step, trace_steps=trace_steps)
    return doc.start()


class Watch:
    """Monitors for one model and its optimizer. :func:`watch` creates and starts one;
    for explicit control create it, then ``start()`` ... ``stop()``. With
    ``step_hooks=False`` no optimizer hook is installed and the loop calls
    :meth:`before_step` / :meth:`after_step` around ``optimizer.step()`` itself. The
    other keyword arguments are those of :func:`watch`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 policy: PolicySpec = None, every: int | None = None,
                 update_every: int = 20, thresholds: Thresholds | None = None,
                 history: int = 1000, distributed: bool | None = None,
                 nan_every_step: bool | None = None, step_hooks: bool = True,
                 trace_steps: int = 0) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if update_every < 0:
            raise ValueError(f"update_every must be >= 0, got {update_every}")
        self.model = model
        self.optimizer = optimizer
        self.policy = Policy(policy)
        self.thresholds = thresholds or Thresholds()
        self.update_every = update_every
        self.steps = 0
        self.findings: list[Finding] = []
        self.every = every or DEFAULT_EVERY
        self._history_size = history
        self._distributed_arg, self._step_hooks = distributed, step_hooks
        self._nan_every_step = nan_every_step
        self._inner = unwrap(model)
        self._handles: list[Any] = []
        self._state = "new"  # -> "active" -> "stopped"
        self._keys: set[tuple[str, str, str]] = set()
        self._inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._in_step = False
        self._stash: tuple[int, list[Finding] | None] | None = None
        self._carry_seen = 0
        self._losses_seen = 0
        self._started_at = self._seconds = 0.0
        self._trace_steps = trace_steps
        self._tracer: Any = None  # an OpTracer while tracing the first steps

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Watch:
        """Install the hooks and check, once, that the optimizer holds every trainable
        parameter of the model. Returns ``self``."""
        if self._state != "new":
            raise RuntimeError("a Watch can be started only once; create a new one")
        self._setup()
        self._state = "active"
        try:
            self._install()
            finding = not_in_optimizer(self._inner, self.optimizer, self._names)
            self._emit([finding] if finding else [])
        except BaseException:
            self._teardown()
            raise
        return self

    def stop(self) -> None:
        """Read the last figures, report parameters that never got a gradient, and
        remove every hook. Idempotent."""
        self._finish(exception=False)

    def __enter__(self) -> Watch:
        return self.start() if self._state == "new" else self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._finish(exception=exc_type is not None)

    @property
    def active(self) -> bool:
        """Whether the hooks are installed."""
        return self._state == "active"

    # -- what the loop may call ------------------------------------------------------
    def loss(self, loss: LossT) -> LossT:
        """Observe this batch's loss (a tensor or a number) and return it unchanged:
        ``doc.loss(loss_fn(out, y)).backward()``. Enables the loss-trend monitor and
        catches a NaN loss before it reaches the gradients. No host sync. A tensor that
        does not require grad (a validation loss under no_grad) is not recorded."""
        if isinstance(loss, torch.Tensor) and not loss.requires_grad:
            return loss
        if self._state == "active":
            self._stats.record_loss(loss)
            self._losses_seen += 1
        return loss

    def before_step(self) -> None:
        """Call just before ``optimizer.step()`` (only with ``step_hooks=False``)."""
        self._before_step(snapshot=True)

    def after_step(self) -> None:
        """Call just after ``optimizer.step()`` (only with ``step_hooks=False``).
        Alone, without :meth:`before_step`, the update ratio is not measured."""
        if not self._in_step:
            self._before_step(snapshot=False)
        self._after_step()

    def check(self) -> list[Finding]:
        """Read the figures now instead of at the next ``every`` step; return the new
        findings (policies apply). Under torch.distributed every rank must call it."""
        if self._state != "active":
            return []
        found = self._read(final=False)
        self._emit(found)
        return found

    # -- results ---------------------------------------------------------------------
    @property
    def stats(self) -> WatchStats:
        """The figures read so far (gradient norms, losses, update ratios)."""
        return self._reader.history.snapshot(self.steps)

    def report(self) -> Report:
        """The findings so far as a :class:`~torchdoctor.findings.Report` (mode
        ``watch``; one check per monitor). Inside the ``with`` block it covers the
        figures read so far; it never synchronises or communicates."""
        if self._state == "new":
            raise RuntimeError("the watch has not started: use `with watch(...)` or start()")
        findings = list(self.findings)
        if self._state == "active":
            pending = self._reader.no_gradient(self.steps)
            findings += [pending] if pending else []
        seconds = (time.perf_counter() - self._started_at) if self._state == "active" \
            else self._seconds
        return build_report(type(self._inner).__name__, str(self._device), seconds,
                            findings, self._skipped(), self._notes())

    def table(self, fmt: str = "table") -> str:
        """The report rendered like the CLI's (``table``, ``markdown`` or ``json``)."""
        from torchdoctor.report import render

        return render([self.report()], fmt)

    # -- setup -----------------------------------------------------------------------
    def _setup(self) -> None:
        self._names = {id(p): n for n, p in self._inner.named_parameters()}
        self._layout = ParamLayout.of(self.optimizer, self._names)
        first = next(iter(self._layout.params), None)
        self._device = first.device if first is not None else torch.device("cpu")
        self._distributed = is_distributed() if self._distributed_arg is None \
            else self._distributed_arg
        self._eager = self._device.type == "cpu" if self._nan_every_step is None \
            else self._nan_every_step
        self._stats = DeviceStats(self._layout, self.every, self._device)
        self._reader = WindowReader(self._layout, self.thresholds, self._history_size)
        self._modes = ModeWatch(self._inner)
        self._carry = GradCarryDetector(sync=self._device.type == "cpu",
                                        name_of=lambda p: self._names.get(id(p), "?"))
        self._started_at = time.perf_counter()

    def _install(self) -> None:
        ref = weakref.ref(self)  # hooks must not keep the watch (or copies) alive
        self._handles.append(self.model.register_forward_pre_hook(
            forward_hook(ref), with_kwargs=True))
        if self._step_hooks:
            self._handles.append(self.optimizer.register_step_pre_hook(step_hook(ref, True)))
            self._handles.append(self.optimizer.register_step_post_hook(step_hook(ref, False)))
        self._carry.watch(self.optimizer)
        if self._trace_steps > 0:
            from torchdoctor.hooks.optrace import OpTracer

            self._tracer = OpTracer(models=[self.model], optimizers=[self.optimizer],
                                    steps=self._trace_steps).start()

    def _teardown(self) -> None:
        if self._tracer is not None:
            self._tracer.stop()
        handles, self._handles = self._handles, []
        for handle in reversed(handles):
            handle.remove()
        self._carry.close()  # also puts each parameter's hook dict back to None
        self._stats.release()
        self._inputs = None
        self._seconds = time.perf_counter() - self._started_at
        self._state = "stopped"

    def _finish(self, exception: bool) -> None:
        if self._state != "active":
            return
        try:
            self._emit(self._final_findings(exception), quiet=exception)
        finally:
            self._teardown()

    def _final_findings(self, exception: bool) -> list[Finding]:
        """The last read and the parameters that never got a gradient. When the loop
        raised, nothing here may hide its exception (and a failing rank skips the
        collective read)."""
        try:
            found = [] if exception and self._distributed else self._read(final=True)
            missing = self._reader.no_gradient(self.steps)
            return found + ([missing] if missing else []) + self._traced()
        except Exception:  # the user's loop raised first: never hide its exception
            if exception:
                return []
            raise

    def _traced(self) -> list[Finding]:
        """What the op tracer found over the first steps (it stops here)."""
        if self._tracer is None:
            return []
        from torchdoctor.hooks.optrace import problem_findings

        self._tracer.stop()
        return problem_findings(self._tracer.problems)

    # -- events ----------------------------------------------------------------------
    def _on_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        grad_enabled = torch.is_grad_enabled()
        if grad_enabled:  # a reference (no copy), dropped after the step
            self._inputs = (args, kwargs)
        finding = self._modes.on_forward(grad_enabled)
        if finding is not None:
            self._emit([finding])

    def _before_step(self, snapshot: bool) -> None:
        self._in_step = True
        found = []
        mode = self._modes.on_step()
        found += [mode] if mode else []
        self._stats.record_grads()
        if snapshot and self.update_every and self.steps % self.update_every == 0:
            self._stats.snapshot()
        read_now = self._stats.filled >= self.every
        if self._eager and self._stash is None and not self._reader.nan_seen \
                and not self._stats.finite_now():
            self._stash_replay()
            read_now = read_now or not self._distributed  # ranks read in step only
        if read_now:
            found += self._read(final=False)
        elif self._carry.sync:  # carried gradients are known at once on the CPU
            found += self._carried()
        try:
            self._emit(found)
        except BaseException:  # a "raise" policy: the step will not happen
            self._in_step, self._inputs = False, None
            raise

    def _after_step(self) -> None:
        self._in_step = False
        self.steps += 1
        if self.update_every:
            self._stats.update_ratio(self.steps)
        self._carry.note_step(self.optimizer)
        self._inputs = None

    # -- reading ---------------------------------------------------------------------
    def _read(self, final: bool) -> list[Finding]:
        current = self.steps + (1 if self._in_step else 0)
        first = current - self._stats.filled + 1
        reduce = all_reduce_sum if self._distributed else None
        window = self._stats.collect(first, reduce, final)
        found = self._reader.read(window, self._lrs(), self._nonfinite)
        if self._stats.track_peak and self._reader.all_had_gradients:
            self._stats.stop_peak_tracking()
        return found + self._carried()

    def _nonfinite(self, event: NonFiniteEvent, window: Window) -> list[Finding]:
        stash = self._stash[1] if self._stash and self._stash[0] == event.step else None
        return nonfinite_findings(event, window, self._inner, self._inputs, stash)

    def _stash_replay(self) -> None:
        """This rank's step just turned non-finite (CPU check): localise it now, while
        its inputs are held, for the read that will report it."""
        step = self.steps + 1
        kind = "loss" if self._stats.loss_nonfinite_now() else "gradient"
        self._stash = (step, replay(NonFiniteEvent(step, kind, True, []), self._inner,
                                    self._inputs))

    def _carried(self) -> list[Finding]:
        self._carry.flush()
        records, self._carry_seen = self._carry.records[self._carry_seen:], \
            len(self._carry.records)
        return [carried_grad_finding(record) for record in records]

    def _lrs(self) -> list[float | None]:
        return [number(group.get("lr")) for group in self.optimizer.param_groups]

    # -- findings --------------------------------------------------------------------
    def _emit(self, found: list[Finding], quiet: bool = False) -> None:
        """Record the new findings (each once), then apply the policy to them."""
        new = []
        for finding in found:
            key = (finding.check, finding.location, finding.hint)
            if key not in self._keys:
                self._keys.add(key)
                new.append(finding)
        self.findings.extend(new)
        if not quiet:
            for finding in new:
                self.policy.apply(finding)

    def _skipped(self) -> dict[str, str]:
        history = self._reader.history
        return skipped_reasons(
            steps=self.steps, losses_seen=self._losses_seen,
            trend_observed=self._reader.trend.observed, ratios=len(history.update_ratios),
            update_every=self.update_every, mode_sensitive=bool(self._modes.sensitive),
            forwards=self._modes.forwards)

    def _notes(self) -> list[str]:
        return watch_notes(self._reader.history, self.steps, self.every, self._distributed)
