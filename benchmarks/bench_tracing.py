"""The cost of op tracing: the whole ``check`` of a script with tracing on (the default
``trace_steps``) against the same check with ``trace_steps=0``, side by side.

Each configuration runs ``--repeat`` times, interleaved (so machine load hits both), on
one intra-op thread, timed in CPU seconds of the process,
and the medians and the best runs are compared; the target is a ratio of at most 1.10. Not a test:
``python benchmarks/bench_tracing.py [SCRIPT] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TORCHDOCTOR_OFFLINE", "1")

import torch

from torchdoctor.engine.context import DEFAULT_TRACE_STEPS, CheckOptions
from torchdoctor.engine.runner import diagnose

ROOT = Path(__file__).resolve().parents[1]


def _timed(script: str, trace_steps: int) -> float:
    """CPU seconds of one whole check (one intra-op thread): on a shared machine, wall
    time mostly measures the neighbours."""
    started = time.process_time()
    diagnose(script, CheckOptions(trace_steps=trace_steps))
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    lab = ROOT / "examples" / "fashion_mnist_lab.py"
    parser.add_argument("script", nargs="?", default=str(lab))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _timed(args.script, 0)  # warm-up: imports, the dataset cache
    on: list[float] = []
    off: list[float] = []
    for _ in range(args.repeat):
        off.append(_timed(args.script, 0))
        on.append(_timed(args.script, DEFAULT_TRACE_STEPS))
    median_on, median_off = statistics.median(on), statistics.median(off)
    print(f"script: {args.script}")
    print(f"{'tracing off (trace_steps=0)':32s} {median_off:8.3f} s CPU  runs: "
          + " ".join(f"{t:.3f}" for t in off))
    print(f"{f'tracing on (trace_steps={DEFAULT_TRACE_STEPS})':32s} {median_on:8.3f} s CPU  runs: "
          + " ".join(f"{t:.3f}" for t in on))
    print(f"ratio on/off: median {median_on / median_off:.3f}, best-of "
          f"{min(on) / min(off):.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
