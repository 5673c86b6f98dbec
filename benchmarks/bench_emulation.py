"""The cost of GPU emulation: the capped script run (``run_script``, the fast-dev-run
budget) of a program with ``--gpu-emulation on`` against the same run with it ``off``,
side by side, on the lab and on one corpus program.

Each configuration runs ``--repeat`` times, interleaved (so machine load hits both), on
one intra-op thread, timed in CPU seconds of the process; the medians are compared.
Goal: the emulated run costs at most 2x the plain one. Exit code 1 when a program is over,
0 otherwise. Not a test: ``python benchmarks/bench_emulation.py [SCRIPT ...] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.state import preserved_state
from torchdoctor.scriptrun.script import run_script

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = [ROOT / "examples" / "fashion_mnist_lab.py",
            ROOT / "tests" / "corpus" / "cuda_amp_checkpoint.py"]
GOAL = 2.0


def _timed(script: Path, emulation: str, data: str | None) -> float:
    """CPU seconds of one capped script run (on a shared machine wall time mostly
    measures the neighbours)."""
    options = CheckOptions(gpu_emulation=emulation, data_root=data)
    started = time.process_time()
    with preserved_state(options.seed):
        result = run_script(script, options)
    seconds = time.process_time() - started
    if result.run.error is not None:
        raise SystemExit(f"{script.name} ({emulation}) crashed: {result.run.error.message}")
    return seconds


def _compare(script: Path, repeat: int, data: str | None) -> float:
    _timed(script, "on", data)  # warm-up: imports, the dataset cache
    plain: list[float] = []
    emulated: list[float] = []
    for _ in range(repeat):
        plain.append(_timed(script, "off", data))
        emulated.append(_timed(script, "on", data))
    ratio = statistics.median(emulated) / statistics.median(plain)
    print(f"{script.name}")
    for name, runs in (("plain (--gpu-emulation off)", plain),
                       ("emulated (--gpu-emulation on)", emulated)):
        print(f"  {name:32s} {statistics.median(runs):7.3f} s CPU  runs: "
              + " ".join(f"{t:.3f}" for t in runs))
    print(f"  ratio emulated/plain: {ratio:.2f} (goal <= {GOAL:g})")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scripts", nargs="*", type=Path, default=PROGRAMS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", default=None, help="FashionMNIST root for the lab")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = [_compare(script, args.repeat, args.data) for script in args.scripts]
    return 1 if max(ratios) > GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
