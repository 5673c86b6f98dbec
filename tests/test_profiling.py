"""torchdoctor.profiling: phase split, top operators, advice, traces, CLI behaviour."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod
from torch.optim import optimizer as optimizer_mod
from torch.utils.data import DataLoader, Dataset

from torchdoctor.errors import TargetError, UsageError
from torchdoctor.profiling import (
    PHASES,
    LoaderInfo,
    ProfileReport,
    advise,
    profile_loop,
    profile_reference,
    profile_steps,
    run_profile_cli,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")


def _profiler_active() -> bool:
    return bool(torch.autograd.profiler._is_profiler_enabled)


def _global_hook_count() -> int:
    dicts = (module_mod._global_forward_pre_hooks, module_mod._global_forward_hooks,
             optimizer_mod._global_optimizer_pre_hooks,
             optimizer_mod._global_optimizer_post_hooks)
    return sum(len(d) for d in dicts)


class SlowDataset(Dataset[tuple[torch.Tensor, int]]):
    """Each item costs a few milliseconds, like decoding an image from disk."""

    def __init__(self, size: int = 64, delay: float = 0.02) -> None:
        self.size = size
        self.delay = delay

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.delay)
        return torch.full((4,), float(index % 3)), index % 2


def _trainer(model: nn.Module, lr: float = 0.01) -> Any:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        inputs, targets = batch
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()

    return step


def _compute_bound_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(256, 512, generator=generator),
             torch.randint(0, 10, (256,), generator=generator)) for _ in range(2)]


def _big_model() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


# --------------------------------------------------------------------------- reference


def test_reference_profile_splits_phases_and_restores_state(tmp_path: Path) -> None:
    rng_before = torch.get_rng_state()
    hooks_before = _global_hook_count()
    report = profile_reference(steps=3, batch_size=32, data_root=tmp_path)
    assert report.steps == 3
    assert report.data == "synthetic"
    assert set(report.phase_seconds) == set(PHASES)
    for phase in ("data", "forward", "backward", "step"):
        assert report.phase_seconds[phase] > 0, phase
    assert sum(report.shares.values()) == pytest.approx(1.0)
    names = [op.name for op in report.top_ops]
    assert names and any(name.startswith("aten::") for name in names)
    assert not any(name.startswith(("torchdoctor.", "ProfilerStep")) for name in names)
    assert report.memory.get("profiled_peak", 0) > 0
    assert not _profiler_active()
    assert _global_hook_count() == hooks_before
    assert torch.equal(torch.get_rng_state(), rng_before)


# --------------------------------------------------------------------------- advice from real loops


def test_data_bound_loop_gets_the_data_loading_advice() -> None:
    loader = DataLoader(SlowDataset(), batch_size=8)
    report = profile_loop(_trainer(nn.Linear(4, 2)), loader, steps=3)
    assert report.shares["data"] > report.shares["forward"]
    advice = " ".join(report.advice)
    assert "Data loading takes" in advice
    assert "num_workers=" in advice
    assert report.loader.batch_size == 8 and report.loader.num_workers == 0


def test_compute_bound_loop_gets_no_data_advice() -> None:
    report = profile_loop(_trainer(_big_model()), _compute_bound_batches(), steps=3)
    assert report.shares["forward"] + report.shares["backward"] > report.shares["data"]
    assert report.shares["forward"] > 0 and report.shares["step"] > 0
    assert not any("Data loading" in text for text in report.advice)
    assert any("Forward and backward" in text for text in report.advice)


def test_profile_loop_splits_the_step_by_itself() -> None:
    report = profile_loop(_trainer(_big_model()), _compute_bound_batches(), steps=2)
    assert report.steps == 2
    for phase in ("forward", "backward", "step"):
        assert report.phase_seconds[phase] > 0, phase
    assert sum(report.shares.values()) == pytest.approx(1.0)


def test_profile_steps_with_marked_phases_writes_a_chrome_trace(tmp_path: Path) -> None:
    model = nn.Linear(8, 2)
    batches = [(torch.randn(16, 8), torch.randint(0, 2, (16,))) for _ in range(3)]
    trace = tmp_path / "traces" / "profile.json"
    with profile_steps(trace=str(trace)) as prof:
        for inputs, targets in prof.batches(batches):
            with prof.phase("forward"):
                loss = nn.functional.cross_entropy(model(inputs), targets)
            with prof.phase("backward"):
                loss.backward()
    report = prof.report()
    assert report.steps == 3 and report.trace_path == str(trace)
    events = json.loads(trace.read_text())["traceEvents"]
    names = {event.get("name") for event in events}
    assert {"torchdoctor.forward", "torchdoctor.backward", "torchdoctor.data"} <= names
    assert "Chrome trace" in report.table()
    assert not _profiler_active()


def test_nested_phase_pauses_the_enclosing_one() -> None:
    started = time.perf_counter()
    with profile_steps() as prof:
        with prof.phase("backward"):
            time.sleep(0.02)
            with prof.phase("forward"):
                time.sleep(0.05)
    wall = time.perf_counter() - started
    seconds = prof.report().phase_seconds
    assert seconds["forward"] >= 0.05 and seconds["backward"] >= 0.02
    # exclusive accounting: the inner 0.05 s is not counted a second time in "backward"
    assert sum(seconds.values()) <= wall


def test_unmarked_loop_says_so_instead_of_advising() -> None:
    with profile_steps() as prof:
        time.sleep(0.01)
        prof.step()
    report = prof.report()
    assert report.steps == 1
    assert report.advice == []
    assert any("no phase was marked" in note for note in report.notes)


# --------------------------------------------------------------------------- cleanup and misuse


def test_profiler_and_hooks_are_gone_after_an_exception() -> None:
    hooks_before = _global_hook_count()

    def broken(batch: Any) -> None:
        raise ValueError("user bug")

    with pytest.raises(ValueError, match="user bug"):
        profile_loop(broken, [1, 2, 3], steps=2, warmup=0)
    assert not _profiler_active()
    assert _global_hook_count() == hooks_before


def test_cannot_nest_inside_another_profiler() -> None:
    with torch.profiler.profile(), pytest.raises(UsageError, match="already running"):
        profile_loop(lambda batch: None, [1], steps=1, warmup=0)
    assert not _profiler_active()


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="phase"), profile_steps() as prof:
        with prof.phase("loss"):
            pass
    with pytest.raises(UsageError, match="steps"):
        profile_loop(lambda batch: None, [1], steps=0)
    with pytest.raises(UsageError, match="no batch"):
        profile_loop(lambda batch: None, [], steps=1)
    with pytest.raises(UsageError, match="not finished"):
        profile_steps().report()
    assert not _profiler_active()


# --------------------------------------------------------------------------- advice rules


def _report(device: str = "cpu", loader: LoaderInfo | None = None,
            device_seconds: float | None = None, **seconds: float) -> ProfileReport:
    phases = dict.fromkeys(PHASES, 0.0) | seconds
    return ProfileReport(target="t", device=device, steps=10, phase_seconds=phases,
                         loader=loader or LoaderInfo(), device_seconds=device_seconds)


def test_data_advice_depends_on_workers_and_device() -> None:
    slow = {"data": 6.0, "forward": 2.0, "backward": 2.0}
    plain = " ".join(advise(_report(loader=LoaderInfo(64, 0, False), **slow)))
    assert "num_workers=" in plain and "pin_memory" not in plain
    some = " ".join(advise(_report(loader=LoaderInfo(64, 4, False), **slow)))
    assert "num_workers=4 is not enough" in some
    gpu = " ".join(advise(_report("cuda", LoaderInfo(64, 0, False), **slow)))
    assert "pin_memory=True" in gpu
    pinned = " ".join(advise(_report("cuda", LoaderInfo(64, 0, True), **slow)))
    assert "pin_memory" not in pinned
    balanced = advise(_report(loader=LoaderInfo(64, 0, False), data=1.0, forward=4.5,
                              backward=4.5))
    assert not any("Data loading" in text for text in balanced)


def test_mixed_precision_only_for_compute_bound_gpu_steps() -> None:
    compute = {"data": 0.5, "forward": 4.0, "backward": 5.0, "step": 0.5}
    on_gpu = " ".join(advise(_report("cuda", device_seconds=8.0, **compute)))
    assert "torch.autocast('cuda', dtype=torch.bfloat16)" in on_gpu
    on_cpu = " ".join(advise(_report("cpu", **compute)))
    assert "autocast" not in on_cpu and "compute-bound" not in on_cpu
    data_bound_gpu = " ".join(advise(_report("cuda", device_seconds=1.0, data=6.0,
                                             forward=2.0, backward=2.0)))
    assert "autocast" not in data_bound_gpu


def test_small_batch_advice_when_the_optimizer_dominates() -> None:
    heavy = advise(_report(loader=LoaderInfo(batch_size=8), forward=1.0, backward=1.0,
                           step=2.0))
    assert any("a batch of 8 is too small" in text for text in heavy)
    light = advise(_report(loader=LoaderInfo(batch_size=256), forward=4.0, backward=5.0,
                           step=1.0))
    assert not any("too small" in text for text in light)


def test_idle_gpu_and_busy_other_advice() -> None:
    idle = advise(_report("cuda", device_seconds=0.5, forward=2.0, backward=2.0, step=1.0))
    assert any("runs kernels only 10%" in text for text in idle)
    busy = advise(_report("cuda", device_seconds=4.5, forward=2.0, backward=2.0, step=1.0))
    assert not any("runs kernels" in text for text in busy)
    chatty = advise(_report(forward=1.0, backward=1.0, other=3.0))
    assert any("every N steps rather" in text for text in chatty)
    script = _report(forward=1.0, backward=1.0, other=3.0)
    script.kind = "script"
    assert any("start-up" in text for text in advise(script))
    assert not any("outside" in text for text in advise(_report(forward=3.0, backward=3.0,
                                                                other=1.0)))


def test_report_renders_in_every_format() -> None:
    report = _report(loader=LoaderInfo(batch_size=32), data=1.0, forward=1.0, backward=1.0,
                     step=1.0)
    text = report.table()
    assert "torchdoctor profile: t" in text and "forward" in text and "batch 32" in text
    assert report.table("markdown").startswith("## torchdoctor profile: t")
    data = json.loads(report.table("json"))
    assert data["phases"]["data"]["share"] == pytest.approx(0.25)
    assert data["kind"] == "profile"
    with pytest.raises(UsageError):
        report.table("xml")


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("target", ["missing_file.py", "notes.txt", "pkg.module:thing"])
def test_cli_bad_target_exits_2_with_one_line(target: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not python\n")
    assert run_profile_cli(target) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and target in err


def test_cli_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_profile_cli(None, fmt="xml") == 2
    assert run_profile_cli(None, steps=0) == 2
    assert run_profile_cli(None, device="tpu-please") == 2
    if not torch.cuda.is_available():
        assert run_profile_cli(None, device="cuda") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 3 + (not torch.cuda.is_available())


def test_cli_reference_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "ref.json"
    assert run_profile_cli("reference", steps=2, data=str(tmp_path), fmt="json",
                           trace=str(trace)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == 2 and data["target"] == "reference trainer"
    assert sum(p["share"] for p in data["phases"].values()) == pytest.approx(1.0, abs=1e-3)
    assert data["top_ops"] and data["trace"] == str(trace)
    assert "traceEvents" in json.loads(trace.read_text())
    assert not _profiler_active()


# --------------------------------------------------------------------------- scripts

SCRIPT = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

def main():
    data = TensorDataset(torch.randn(256, 20), torch.randint(0, 3, (256,)))
    loader = DataLoader(data, batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(2):
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
    {crash}

if __name__ == "__main__":
    main()
"""


def _script(tmp_path: Path, crash: str = "") -> Path:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT.format(crash=crash))
    return path


def test_profile_script_uses_the_instrument_phases(tmp_path: Path) -> None:
    pytest.importorskip("torchdoctor.scriptrun.instrument")
    from torchdoctor.engine.context import CheckOptions
    from torchdoctor.profiling import profile_script

    report = profile_script(_script(tmp_path), CheckOptions(limit_batches=3, max_steps=20))
    assert report.status in ("completed", "stopped") and report.finished
    assert report.steps == 6  # 2 epochs x 3 batches
    assert report.loader.batch_size == 32
    for phase in ("data", "forward", "backward", "step"):
        assert report.phase_seconds[phase] > 0, phase
    assert sum(report.shares.values()) == pytest.approx(1.0)
    assert report.top_ops
    assert not _profiler_active()


def test_cli_profiles_a_crashing_script_and_exits_1(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torchdoctor.scriptrun.instrument")
    path = _script(tmp_path, crash="raise RuntimeError('after training')")
    assert run_profile_cli(str(path), steps=5, limit_batches=2) == 1
    out = capsys.readouterr().out
    assert "torchdoctor profile:" in out and "ended early" in out
    assert not _profiler_active()


def test_profile_script_missing_file_is_a_target_error(tmp_path: Path) -> None:
    from torchdoctor.engine.context import CheckOptions
    from torchdoctor.profiling import profile_script

    with pytest.raises(TargetError):
        profile_script(tmp_path / "nope.py", CheckOptions())
