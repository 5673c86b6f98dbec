"""What torchdoctor.watch costs per training step, next to the usual alternatives.

For the reference MLP (784-256-256-10, batch 64) and a small CNN, on one device, it
times the same training loop four ways: plain; under ``torchdoctor.watch`` with its
defaults (the loop passes its loss to ``doc.loss``); with a forward hook on every
module checking its output for NaN/inf on every step (the naive always-on check); and
under ``torch.autograd.detect_anomaly``. The variants run interleaved, in a rotating
order, ``--repeats`` times; the table shows the median ms/step and the ratio to plain.

    python benchmarks/bench_watch.py [--steps 40] [--repeats 7] [--device cpu]

A benchmark, not a test: it is never collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import torchdoctor

Loop = Callable[[int], None]


def mlp() -> nn.Module:
    """The reference classifier (inline if torchdoctor.reference is not there)."""
    try:
        from torchdoctor.reference.trainer import FashionMNISTClassifier
    except ImportError:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(256, 10))
    return FashionMNISTClassifier()


def cnn() -> nn.Module:
    """A small CNN for 1x28x28 images."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 7 * 7, 10))


@contextlib.contextmanager
def nonfinite_hooks(model: nn.Module) -> Iterator[None]:
    """A forward hook on every module that checks its output for NaN/inf (one host
    sync per module per step): what "leave a NaN check on" usually looks like."""
    def check(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and not bool(torch.isfinite(output).all()):
            raise FloatingPointError(f"non-finite output in {type(module).__name__}")

    handles = [m.register_forward_hook(check) for m in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def make_loop(model: nn.Module, device: str, variant: str,
              closers: list[Callable[[], None]]) -> Loop:
    """A closure training ``model`` for n steps under ``variant`` (what must be closed
    at the end is appended to ``closers``)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (64,), generator=gen).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def steps(n: int, observe: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        for _ in range(n):
            optimizer.zero_grad()
            observe(loss_fn(model(x), y)).backward()
            optimizer.step()

    # the watch stays on across the timed runs, as it would over a real training run
    doc = torchdoctor.watch(model, optimizer) if variant == "watch" else None
    if doc is not None:
        closers.append(doc.stop)

    def run(n: int) -> None:
        if doc is not None:
            steps(n, doc.loss)
        elif variant == "hooks":
            with nonfinite_hooks(model):
                steps(n)
        elif variant == "anomaly":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # anomaly mode warns on every entry
                with torch.autograd.detect_anomaly():
                    steps(n)
        else:
            steps(n)
    return run


VARIANTS = ("plain", "watch", "hooks", "anomaly")
LABELS = {"plain": "plain loop", "watch": "watch() default",
          "hooks": "per-layer NaN hooks", "anomaly": "detect_anomaly"}


def bench_model(build: Callable[[], nn.Module], device: str, steps: int, repeats: int,
                clock: Callable[[], float]) -> dict[str, tuple[float, float]]:
    """Per variant: (median ms/step, median ratio to plain over the rounds)."""
    torch.manual_seed(0)
    base = build().to(device)
    closers: list[Callable[[], None]] = []
    loops = {v: make_loop(copy.deepcopy(base), device, v, closers) for v in VARIANTS}
    for loop in loops.values():
        loop(3)  # warm-up (allocator, first-call costs)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            times[variant].append(_time(loops[variant], steps, device, clock))
    for close in closers:
        close()
    return {v: (statistics.median(t), statistics.median(
        a / b for a, b in zip(t, times["plain"]))) for v, t in times.items()}


def _time(loop: Loop, steps: int, device: str, clock: Callable[[], float]) -> float:
    _sync(device)
    start = clock()
    loop(steps)
    _sync(device)
    return (clock() - start) / steps * 1e3


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per variant")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    from torchdoctor.report import table

    rows = []
    for name, build in (("MLP 784-256-256-10", mlp), ("small CNN", cnn)):
        figures = bench_model(build, args.device, args.steps, args.repeats, clock)
        for variant in VARIANTS:
            ms, ratio = figures[variant]
            rows.append([name, LABELS[variant], f"{ms:.3f}", f"{ratio:.3f}x"])
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), batch 64, Adam, {args.clock} clock; {args.repeats} rounds of "
          f"{args.steps} steps")
    print(table(rows, ["model", "variant", "ms/step (median)", "vs plain (median)"]))


if __name__ == "__main__":
    main()
