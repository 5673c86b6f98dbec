"""torchdoctor.watch under torch.distributed: two CPU processes on the gloo backend.

Rank 1 gets a NaN in one batch; rank 0 must report it, because the figures are
all-reduced when they are read. The same file is the worker program: the test runs
``python tests/test_watch_ddp.py RANK PORT OUT`` twice.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # two worker processes

WORLD = 2
NAN_STEP = 4  # 1-based step at which rank 1's batch holds a NaN


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run both ranks once; return what each wrote."""
    out = tmp_path_factory.mktemp("ddp")
    port = _free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(WORLD)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=90)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {rank} failed:\n{logs[rank]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


def test_rank0_reports_the_nan_of_rank1(results: list[dict[str, Any]]) -> None:
    rank0, rank1 = (r["replicas"] for r in results)
    assert rank0["local_nan"] is False and rank1["local_nan"] is True
    for rank in (rank0, rank1):
        nan = [f for f in rank["findings"] if f["check"] == "nan-loss"]
        assert nan, rank["findings"]
        assert f"at step {NAN_STEP}" in nan[0]["message"]
        assert "of 2 ranks" in nan[0]["message"]
    # rank 1 held the bad inputs and localised them by replaying its step
    assert any("inputs hold NaN" in f["message"] for f in rank1["findings"])
    assert any("another rank" in f["message"] for f in rank0["findings"])


def test_gradient_norms_are_global(results: list[dict[str, Any]]) -> None:
    local = [r["replicas"]["local_norms"] for r in results]
    reported = results[0]["replicas"]["norms"]
    assert reported == results[1]["replicas"]["norms"]
    steps = NAN_STEP - 1  # the healthy steps before the NaN
    expected = [math.sqrt((a * a + b * b) / WORLD) for a, b in zip(local[0], local[1])]
    assert reported[:steps] == pytest.approx(expected[:steps], rel=1e-5)
    assert local[0][0] != pytest.approx(local[1][0])  # the replicas really differ


def test_ddp_wrapped_model(results: list[dict[str, Any]]) -> None:
    for result in results:
        ddp = result["ddp"]
        assert ddp["target"] == "TabularNet"
        assert any(f["check"] == "nan-loss" for f in ddp["findings"])
        assert "all-reduced" in " ".join(ddp["notes"])
        assert ddp["hooks_left"] == 0


# ------------------------------------------------------------------------- the worker
def _train(model: Any, opt: Any, doc: Any, rank: int, steps: int) -> tuple[list[float], bool]:
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
    norms, local_nan = [], False
    for step in range(1, steps + 1):
        inputs = x.clone()
        if rank == 1 and step == NAN_STEP:
            inputs[0, 0] = float("nan")
        opt.zero_grad()
        loss = doc.loss(nn.functional.cross_entropy(model(inputs), y))
        local_nan = local_nan or not bool(torch.isfinite(loss))
        loss.backward()
        norms.append(float(torch.linalg.vector_norm(
            torch.cat([p.grad.flatten() for p in model.parameters()]))))
        opt.step()
    return norms, local_nan


def _net() -> Any:
    from tests.models import TabularNet

    return TabularNet(dropout=0.0)  # no randomness: the replicas differ by their data only


def _findings(doc: Any) -> list[dict[str, str]]:
    return [{"check": f.check, "message": f.message} for f in doc.findings]


def _replicas(rank: int) -> dict[str, Any]:
    """Independent replicas (no DDP): only the all-reduce of the watch connects them."""
    import torch

    import torchdoctor

    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchdoctor.watch(model, opt, policy="record") as doc:
        local_norms, local_nan = _train(model, opt, doc, rank, steps=6)
    return {"findings": _findings(doc), "local_norms": local_norms, "local_nan": local_nan,
            "norms": [n[0] for _, n in doc.stats.grad_norms]}


def _ddp(rank: int) -> dict[str, Any]:
    """A DDP-wrapped model with the default settings (figures read every 20 steps)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    import torchdoctor

    torch.manual_seed(0)
    model = DistributedDataParallel(_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchdoctor.watch(model, opt, policy="record") as doc:
        _train(model, opt, doc, rank, steps=5)
    report = doc.report()
    hooks = len(model._forward_pre_hooks) + len(opt._optimizer_step_pre_hooks)
    return {"findings": _findings(doc), "target": report.target, "notes": report.notes,
            "hooks_left": hooks}


def _worker(rank: int, port: int, out: Path) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # a worker process of its own: two ranks share the cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=40))
    try:
        result = {"replicas": _replicas(rank), "ddp": _ddp(rank)}
    finally:
        dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    sys.stdout.flush()
    # gloo's threads can hang the interpreter's shutdown: the work is done and saved
    os._exit(0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.models
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
