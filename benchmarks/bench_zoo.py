"""Model mode on the torchvision classification zoo: time and outcome per model.

Not a test: a measurement. Each model of ``torchvision.models.list_models(module=
torchvision.models)`` is built with ``num_classes=10`` and no weights and checked with
:func:`torchdoctor.diagnose_model`; one line per model says how long building and
checking took, the data model mode inferred, the error findings and crashed checks, and
why checks were skipped (a model too large for the time budget is skipped, not failed).

    TORCHDOCTOR_OFFLINE=1 python benchmarks/bench_zoo.py [NAME ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
import torchvision
from torchvision import models

from torchdoctor import diagnose_model
from torchdoctor.findings import Outcome, Severity


def build(name: str) -> torch.nn.Module:
    """The model ``name`` with 10 classes and random weights."""
    extra: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        extra["init_weights"] = True  # silences torchvision's FutureWarning
    return models.get_model(name, weights=None, num_classes=10, **extra)


def measure(name: str) -> dict[str, Any]:
    """Build and check one model; what it took and what the report says."""
    started = time.perf_counter()
    model = build(name)
    built = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    report = diagnose_model(model, name=name)
    del model
    checked = time.perf_counter() - started - built
    errors = [f"{f.check}: {f.message}" for c in report.checks for f in c.findings
              if f.severity is Severity.ERROR]
    crashed = [c.id for c in report.checks if c.outcome is Outcome.CRASHED]
    skipped = sorted({c.detail for c in report.checks if c.outcome is Outcome.SKIPPED
                      and "script mode" not in c.detail})
    return {"model": name, "params_m": round(params / 1e6, 1), "build_s": round(built, 1),
            "check_s": round(checked, 1), "data": report.data, "errors": errors,
            "crashed": crashed, "skipped": skipped,
            "checks": {c.id: c.outcome.value for c in report.checks}}


def main(argv: list[str] | None = None) -> int:
    """Measure the models named (default: the whole zoo), one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more "
                        "threads wait on each other, 10x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.names or models.list_models(module=torchvision.models)
    results = []
    for name in names:
        row = measure(name)
        results.append(row)
        verdict = "CRASH" if row["crashed"] else "ERROR" if row["errors"] else \
            "skipped" if row["skipped"] else "ok"
        print(f"{name:24s} {row['params_m']:7.1f}M build {row['build_s']:5.1f}s "
              f"check {row['check_s']:6.1f}s {verdict:7s} {row['data']}", flush=True)
        for line in row["errors"] + row["crashed"] + row["skipped"]:
            print(f"    {line[:300]}", flush=True)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(results, out, indent=1)
    bad = [r["model"] for r in results if r["errors"] or r["crashed"]]
    print(f"{len(results)} models, {len(bad)} with errors or crashes: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
