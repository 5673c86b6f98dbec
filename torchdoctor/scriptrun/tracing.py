"""The op tracer's part in a script run: started when the instrumentation is entered,
stopped (and its hooks removed) when it exits, its problems stored on the
:class:`~torchdoctor.scriptrun.observations.ScriptRun`.

Kept apart from :mod:`torchdoctor.scriptrun.instrument` so the instrumentation only
calls :func:`start_tracing` and :meth:`ScriptTracing.close`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckOptions
    from torchdoctor.hooks.optrace import OpTracer
    from torchdoctor.scriptrun.observations import ScriptRun


class ScriptTracing:
    """One script run's op tracer (none when ``--trace-steps 0``)."""

    def __init__(self, run: ScriptRun, tracer: OpTracer | None) -> None:
        self.run = run
        self.tracer = tracer

    def close(self) -> None:
        """Stop tracing, remove its hooks and record what it found (idempotent)."""
        if self.tracer is None:
            return
        tracer, self.tracer = self.tracer, None
        tracer.stop()
        self.run.op_problems = tracer.problems
        self.run.traced_ops = tracer.ops_seen


def start_tracing(options: CheckOptions, run: ScriptRun) -> ScriptTracing:
    """Trace the first ``options.trace_steps`` optimizer steps of the run (and the first
    forwards of its first evaluation phase)."""
    if options.trace_steps <= 0:
        return ScriptTracing(run, None)
    from torchdoctor.hooks.optrace import OpTracer

    return ScriptTracing(run, OpTracer(steps=options.trace_steps).start())
