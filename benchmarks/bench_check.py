"""How much time `torchdoctor check` adds to a training script's own capped run.

Times three commands, alternating them so machine load hits all alike:

* ``python -c "import torch, torchvision"``: the least any torch program pays;
* ``python benchmarks/capped_run.py LAB``: the lab (``examples/fashion_mnist_lab.py``)
  run to its end under the same per-phase caps as a check, with no doctor (imports
  included): the *capped run*;
* ``torchdoctor check LAB``.

It prints the medians, the ratios and differences. Goal (issue 8): the check stays within
1.5 s of the capped run on a 2-core CPU; the difference to the bare imports is printed
too (it includes the lab's own ten capped epochs).

    python benchmarks/bench_check.py                 # 3 repeats, offline
    python benchmarks/bench_check.py --repeats 5 --online

Exit code: 0 when the goal is met, 1 when over, 2 when a command could not run.
Not a test: it prints numbers for people, and is never collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAB = ROOT / "examples" / "fashion_mnist_lab.py"
CAPPED_RUN = ROOT / "benchmarks" / "capped_run.py"
GOAL_SECONDS = 1.5
GOAL_CORES = 2


@dataclass
class Timed:
    """One command and the wall seconds of its runs."""

    name: str
    argv: list[str]
    seconds: list[float]

    @property
    def median(self) -> float:
        """Median wall seconds."""
        return statistics.median(self.seconds)


class CommandFailed(RuntimeError):
    """A benchmarked command exited with a code that means it did not do its job."""


def run_once(argv: Sequence[str], env: dict[str, str], timeout: float,
             ok_codes: Sequence[int]) -> float:
    """Wall seconds of one run of ``argv``; raises CommandFailed on a bad exit code."""
    started = time.perf_counter()
    try:
        done = subprocess.run(list(argv), env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{' '.join(argv)} took over {timeout:.0f}s") from None
    seconds = time.perf_counter() - started
    if done.returncode not in ok_codes:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise CommandFailed(f"{' '.join(argv)} exited {done.returncode}:\n  "
                            + "\n  ".join(tail))
    return seconds


def benchmark_env(online: bool) -> dict[str, str]:
    """The environment of both commands: TORCHDOCTOR_OFFLINE=1 unless ``online``."""
    env = dict(os.environ)
    if online:
        env.pop("TORCHDOCTOR_OFFLINE", None)
    else:
        env["TORCHDOCTOR_OFFLINE"] = "1"
    return env


def measure(commands: list[tuple[Timed, Sequence[int]]], repeats: int, warmup: int,
            env: dict[str, str], timeout: float) -> None:
    """Run the commands alternately: ``warmup`` unmeasured rounds, then ``repeats``."""
    for round_ in range(warmup + repeats):
        for timed, ok_codes in commands:
            seconds = run_once(timed.argv, env, timeout, ok_codes)
            if round_ >= warmup:
                timed.seconds.append(seconds)
                print(f"  {timed.name:<10} run {round_ - warmup + 1}: {seconds:.2f}s",
                      flush=True)


def verdict(check: Timed, capped: Timed, imports: Timed, goal: float) -> tuple[str, bool]:
    """The summary lines and whether the goal (at most ``goal`` s over the capped run)
    is met."""
    added = check.median - capped.median
    cores = os.cpu_count() or 0
    met = added <= goal
    lines = [
        f"imports (import torch, torchvision):   median {imports.median:.2f}s",
        f"capped run (the lab, same caps):       median {capped.median:.2f}s",
        f"torchdoctor check:                     median {check.median:.2f}s",
        f"check vs capped run: ratio {_ratio(check, capped)}, difference {added:+.2f}s",
        f"check vs imports:    ratio {_ratio(check, imports)}, difference "
        f"{check.median - imports.median:+.2f}s",
        f"goal: the doctor adds at most {goal:.1f}s to the capped run on a {GOAL_CORES}-core "
        f"CPU -> {'PASS' if met else f'over by {added - goal:.2f}s'}",
    ]
    if cores != GOAL_CORES:
        lines.append(f"note: this machine has {cores} CPU cores, not {GOAL_CORES}; "
                     "the goal is stated for 2")
    return "\n".join(lines), met


def _ratio(one: Timed, other: Timed) -> str:
    return f"{one.median / other.median:.2f}x" if other.median else "inf"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", "-n", type=int, default=3, help="measured runs of each")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--online", action="store_true",
                        help="allow downloads (default: TORCHDOCTOR_OFFLINE=1)")
    parser.add_argument("--lab", type=Path, default=DEFAULT_LAB, help="the script to check")
    parser.add_argument("--goal", type=float, default=GOAL_SECONDS,
                        help="seconds the doctor may add to the capped run (default 1.5)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 PASS, 1 over the goal, 2 a command failed."""
    args = parse_args(argv)
    if not args.lab.is_file():
        print(f"bench_check: {args.lab} not found", file=sys.stderr)
        return 2
    imports = Timed("imports", [sys.executable, "-c", "import torch, torchvision"], [])
    capped = Timed("capped", [sys.executable, str(CAPPED_RUN), str(args.lab)], [])
    # exit 1 only means "findings": the check still ran in full, so its time counts
    check = Timed("check", [sys.executable, "-m", "torchdoctor", "check", str(args.lab)], [])
    print(f"timing {args.repeats} alternating run(s) of each (after {args.warmup} warm-up)...")
    try:
        measure([(imports, (0,)), (capped, (0,)), (check, (0, 1))], args.repeats,
                args.warmup, benchmark_env(args.online), args.timeout)
    except CommandFailed as exc:
        print(f"bench_check: {exc}", file=sys.stderr)
        return 2
    text, met = verdict(check, capped, imports, args.goal)
    print(text)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
