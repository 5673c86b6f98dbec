"""GPU emulation (torchdoctor.scriptrun.gpuemu): what a program sees, what is recorded,
and that nothing of it is left behind. Each test runs its code in-process inside a
:class:`GpuEmulation` (this file is user code to it), on this CPU-only machine."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchdoctor.engine.context import CheckOptions
from torchdoctor.scriptrun.gpuemu import GpuEmulation, wants_emulation
from torchdoctor.scriptrun.observations import ScriptRun

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="emulation is for machines without a GPU")


@pytest.fixture
def emulated() -> Iterator[ScriptRun]:
    run = ScriptRun("test")
    with GpuEmulation(run, True):
        yield run


def _origins(run: ScriptRun) -> list[str]:
    return [m.origin for m in run.device_mixes]


def test_auto_emulates_only_without_a_gpu() -> None:
    assert wants_emulation(CheckOptions()) is not torch.cuda.is_available()
    assert wants_emulation(CheckOptions(gpu_emulation="off")) is False
    assert wants_emulation(CheckOptions(gpu_emulation="on")) is True


def test_moving_to_cuda_returns_a_new_tensor_on_the_emulated_device(
        emulated: ScriptRun) -> None:
    x = torch.randn(3, requires_grad=True)
    y = x.to("cuda")
    assert y is not x and y.device == torch.device("cuda", 0) and y.is_cuda
    assert y.get_device() == 0 and not y.is_cpu
    assert x.device.type == "cpu" and not x.is_cuda  # .to() does not move in place
    assert y.to("cuda") is y and y.cuda() is y
    back = y.cpu()
    assert back is not y and back.device.type == "cpu"
    (y * 2).sum().backward()  # the copy keeps autograd
    assert x.grad is not None and torch.equal(x.grad, torch.full((3,), 2.0))
    z = torch.zeros(2, device=y.device)
    assert z.device == y.device and torch.ones_like(z).is_cuda
    assert torch.zeros_like(z, device="cpu").device.type == "cpu"
    assert torch.randn(2, device="cuda:1").device == torch.device("cuda", 1)
    assert y.half().device == y.device and y.to(torch.float64).is_cuda
    assert emulated.device_mixes == []


def test_model_to_device_keeps_parameter_identity_and_trains(emulated: ScriptRun) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    params = list(model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)  # built before the move
    model.to(torch.device("cuda"))
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(p.device.type == "cuda" for p in model.parameters())
    before = params[0].detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(5, 4).cuda()),
                                           torch.randint(0, 2, (5,), device="cuda"))
        loss.backward()
        assert params[0].grad is not None and params[0].grad.is_cuda
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert not torch.equal(before, params[0])
    assert next(copy.deepcopy(model).parameters()).is_cuda
    assert nn.Parameter(torch.ones(2).cuda()).is_cuda
    assert emulated.device_mixes == []


def test_a_batch_never_moved_is_recorded_at_the_users_line(emulated: ScriptRun) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))),
                        batch_size=4)
    model = nn.Linear(4, 2).cuda()
    for inputs, labels in loader:
        inputs = inputs.cuda()
        labels.to("cuda")  # not assigned: labels stay on the CPU, as on a real GPU
        nn.functional.cross_entropy(model(inputs), labels)
    [mix] = emulated.device_mixes
    assert mix.origin == "loader" and mix.count == 2 and mix.op == "cross_entropy"
    assert mix.used_at is not None and mix.used_at.file.endswith("test_gpu_emulation.py")
    assert "cuda:0" in mix.gpu and "(4,) on cpu" in mix.other


def test_cpu_scalars_and_tensors_of_unknown_origin_are_not_mixes(
        made_before: torch.Tensor) -> None:
    run = ScriptRun("test")
    with GpuEmulation(run, True):
        x = torch.randn(3, 3).cuda()
        _ = x * torch.tensor(2.0)  # 0-dim CPU tensors are fine on a GPU too
        _ = x + made_before  # made outside the program: no evidence it stays on the CPU
        x[torch.tensor([0, 1])] = 1.0  # CPU indices are fine
        _ = x[torch.tensor([0, 2])]
        x.copy_(torch.ones(3, 3))
    assert run.device_mixes == []


@pytest.fixture
def made_before() -> torch.Tensor:
    return torch.randn(3)


def test_two_emulated_gpus_and_numpy_are_recorded(emulated: ScriptRun) -> None:
    a, b = torch.ones(2, device="cuda:0"), torch.ones(2, device="cuda:1")
    _ = a + b
    _ = a.numpy()
    _ = a.cpu().numpy()  # the fix: no record
    _ = a.numpy(force=True)  # copies to the host first: no record
    assert _origins(emulated) == ["device", "numpy"]


class _TwoGpus(nn.Module):
    """pytorch/tutorials model_parallel_tutorial: one half of the model per GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.net1 = nn.Linear(10, 10).to("cuda:0")
        self.net2 = nn.Linear(10, 5).to("cuda:1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net2(torch.relu(self.net1(x.to("cuda:0"))).to("cuda:1"))


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, foreach=True),
    lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
], ids=["sgd-momentum", "adam", "adamw-foreach", "adam-fused"])
def test_a_foreach_optimizer_over_two_gpus_mixes_nothing(emulated: ScriptRun,
                                                         make_optimizer: Any) -> None:
    # torch groups foreach ops by device; under emulation every tensor is on the CPU, so
    # one group holds both GPUs' parameters and only each index is on one device
    model = _TwoGpus()
    optimizer = make_optimizer(model.parameters())
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(torch.randn(20, 10)),
                               torch.randn(20, 5, device="cuda:1")).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert emulated.device_mixes == []
    assert {p.device for p in model.net1.parameters()} == {torch.device("cuda", 0)}
    assert {p.device for p in model.net2.parameters()} == {torch.device("cuda", 1)}
    assert all(p.grad is not None and p.grad.device == p.device for p in model.parameters())


def test_foreach_ops_are_checked_and_tagged_per_index(emulated: ScriptRun) -> None:
    a, b = torch.ones(2, device="cuda:0"), torch.ones(3, device="cuda:1")
    sums = torch._foreach_add([a, b], [torch.ones(2, device="cuda:0"), b])
    assert [t.device.index for t in sums] == [0, 1] and emulated.device_mixes == []
    torch._foreach_add_([a, b], [a.new_ones(2), torch.ones(3, device="cuda:0")])
    assert (a.device.index, b.device.index) == (0, 1)  # in place: the tags stay
    [mix] = emulated.device_mixes  # index 1 mixes cuda:1 with cuda:0: a real mix
    assert mix.origin == "device" and mix.op == "_foreach_add_"
    assert "(3,) on cuda:1" in mix.gpu and "(3,) on cuda:0" in mix.other


def test_a_cpu_copy_used_with_gpu_tensors_is_recorded(emulated: ScriptRun) -> None:
    x = torch.randn(4).cuda()
    stats = x.cpu() * 2
    _ = x - stats
    [mix] = emulated.device_mixes
    assert mix.origin == "cpu-copy" and mix.created_at is not None


def test_torch_cuda_answers_for_one_gpu_and_is_restored() -> None:
    real = torch.cuda.is_available
    rng = torch.get_rng_state()
    run = ScriptRun("test")
    with GpuEmulation(run, True):
        assert torch.cuda.is_available() and torch.cuda.device_count() == 1
        assert torch.accelerator.current_accelerator() == torch.device("cuda")
        assert "torchdoctor" in torch.cuda.get_device_name(0)
        torch.cuda.manual_seed_all(1)
        torch.cuda.set_rng_state_all(torch.cuda.get_rng_state_all())  # a checkpoint's
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        assert torch.cuda.memory_allocated() == 0 and torch.cuda.memory_stats() == {}
        assert "torchdoctor" in torch.cuda.memory_summary()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        end.record()
        assert end.elapsed_time(start) <= 0.0 <= start.elapsed_time(end)
        assert wants_emulation(CheckOptions()) is True  # torchdoctor's code sees the truth
    assert torch.cuda.is_available is real and not torch.cuda.is_available()
    assert torch.equal(torch.get_rng_state(), rng)
    assert run.gpu_emulated and run.notes == []  # nothing was put on the GPU: no note


def test_the_report_notes_the_emulation_when_the_gpu_was_used() -> None:
    run = ScriptRun("test")
    with GpuEmulation(run, True):
        torch.ones(1).cuda()
    assert any("GPU emulation" in n for n in run.notes)


def test_nothing_is_left_installed_after_the_run() -> None:
    before = (vars(nn.Parameter)["__new__"], torch.load, DataLoader.__iter__,
              torch.cuda.device_count, torch.accelerator.is_available,
              torch.backends.cudnn.is_acceptable, torch.from_numpy)
    with GpuEmulation(ScriptRun("test"), True):
        kept = torch.ones(2).cuda()
    after = (vars(nn.Parameter)["__new__"], torch.load, DataLoader.__iter__,
             torch.cuda.device_count, torch.accelerator.is_available,
             torch.backends.cudnn.is_acceptable, torch.from_numpy)
    assert after == before
    assert torch.overrides._get_current_function_mode_stack() == []
    assert kept.device.type == "cpu"  # the tag is gone with the run


def test_amp_pin_memory_and_non_blocking_run_on_the_cpu(emulated: ScriptRun) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))),
                        batch_size=4, pin_memory=True)
    model = nn.Linear(4, 2).to("cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no accelerator" warning from pin_memory
        for inputs, labels in loader:
            inputs = inputs.to("cuda", non_blocking=True)
            labels = labels.pin_memory().to("cuda", non_blocking=True)
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                loss = nn.functional.cross_entropy(model(inputs), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    assert scaler.get_scale() > 0 and emulated.device_mixes == []


@pytest.mark.parametrize("map_location", ["cuda", torch.device("cuda", 0), {"cpu": "cuda:0"},
                                          None, lambda storage, loc: storage.cuda()])
def test_state_dicts_saved_on_the_emulated_gpu_load_with_map_location(
        map_location: object, tmp_path: Path) -> None:
    run = ScriptRun("test")
    path = tmp_path / "model.pt"
    with GpuEmulation(run, True):
        model = nn.Linear(3, 2).cuda()
        torch.save(model.state_dict(), path)
        state = torch.load(path, map_location=map_location, weights_only=True)
        fresh = nn.Linear(3, 2).cuda()
        fresh.load_state_dict(state)
        assert torch.equal(fresh.weight, model.weight) and fresh.weight.is_cuda
        _ = fresh(torch.randn(1, 3, device="cuda"))
        on_gpu = state["weight"].is_cuda
    assert on_gpu is (map_location is not None)  # saved from CPU storage: None keeps it
    assert run.device_mixes == []


def test_a_numpy_array_made_tensor_never_moved_is_recorded(emulated: ScriptRun) -> None:
    """nanoGPT's get_batch shape: torch.from_numpy (no function mode sees it) then stack."""
    import numpy as np

    weight = torch.randn(5, 3, device="cuda")
    targets = torch.stack([torch.from_numpy(np.arange(3)) for _ in range(2)])
    _ = nn.functional.embedding(targets, weight)
    [mix] = emulated.device_mixes
    assert (mix.origin, mix.detail) == ("factory", "from_numpy")
    assert mix.created_at is not None and mix.created_at.file.endswith("test_gpu_emulation.py")


def test_a_whole_model_loaded_for_cuda_is_on_the_emulated_gpu(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    run = ScriptRun("test")
    with GpuEmulation(run, True):
        torch.save(nn.Linear(3, 2), path)
        model = torch.load(path, map_location="cuda", weights_only=False)
        assert all(p.is_cuda for p in model.parameters())
        _ = model(torch.randn(4, 3, device="cuda"))
    assert run.device_mixes == []


def test_packed_sequences_keep_their_lengths_on_the_cpu(emulated: ScriptRun) -> None:
    """torch wants the lengths of a packed sequence on the CPU: no mix, and the lengths
    pad_packed_sequence returns are CPU tensors, as on a GPU."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    loader = DataLoader(TensorDataset(torch.randn(4, 5, 3), torch.tensor([5, 4, 2, 1])),
                        batch_size=4)
    rnn = nn.GRU(3, 6, batch_first=True).cuda()
    for inputs, lengths in loader:
        packed = pack_padded_sequence(inputs.cuda(), lengths, batch_first=True)
        output, out_lengths = pad_packed_sequence(rnn(packed)[0], batch_first=True)
        assert output.is_cuda and not out_lengths.is_cuda
        mask = torch.arange(output.shape[1])[None, :] < out_lengths[:, None]
        assert not mask.is_cuda
    assert emulated.device_mixes == []


def test_torchdoctors_own_operations_are_never_reported(emulated: ScriptRun) -> None:
    """The instrumentation runs inside the emulation too: a mix in torchdoctor's code is
    not the user's (the same mix in this file, user code, is)."""
    import torchdoctor.tensors as ours

    space: dict[str, object] = {}
    exec(compile("def mix(a, b):\n    return a + b\n", ours.__file__, "exec"), space)
    gpu, cpu = torch.randn(3).cuda(), torch.randn(3)
    space["mix"](gpu, cpu)  # type: ignore[operator]
    assert emulated.device_mixes == []
    _ = gpu + cpu
    assert _origins(emulated) == ["factory"]


def test_the_deprecated_cuda_amp_api_runs_on_the_cpu(emulated: ScriptRun) -> None:
    model = nn.Linear(4, 2).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(FutureWarning):
        scaler = torch.cuda.amp.GradScaler()
    with pytest.warns(FutureWarning), torch.cuda.amp.autocast():
        loss = model(torch.randn(3, 4, device="cuda")).sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert emulated.device_mixes == []


def test_gradients_handed_to_hooks_are_on_the_tensors_device(emulated: ScriptRun) -> None:
    """A hook runs inside backward, where torch does not apply function modes; the
    gradient it keeps is on the tensor's device when the program uses it afterwards."""
    x = torch.randn(3, requires_grad=True).cuda()
    kept: list[torch.Tensor] = []
    x.register_hook(kept.append)
    (x * 2).sum().backward()
    assert kept[0].is_cuda
    _ = kept[0] + torch.randn(3, device="cuda")
    assert emulated.device_mixes == []


def test_data_parallel_runs_on_the_one_emulated_gpu(emulated: ScriptRun) -> None:
    # pytorch/examples imagenet: `model = nn.DataParallel(model).cuda()` when CUDA is
    # there; torch's scatter calls the CUDA driver, the emulation copies the inputs
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))),
                        batch_size=4)
    model = nn.DataParallel(nn.Linear(4, 2)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for inputs, labels in loader:
        output = model(inputs)  # DataParallel moves the inputs itself
        assert output.is_cuda
        loss = nn.functional.cross_entropy(output, labels.cuda())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert emulated.device_mixes == []
    for inputs, labels in loader:
        nn.functional.cross_entropy(model(inputs), labels)  # labels never moved
    [mix] = emulated.device_mixes
    assert mix.origin == "loader" and mix.op == "cross_entropy"


def test_model_mode_trains_the_module_a_data_parallel_wrapper_runs() -> None:
    from torchdoctor.engine.target import script_candidates

    inner = nn.Sequential(nn.Linear(4, 2))
    wrapped = nn.DataParallel(inner)
    [candidate] = script_candidates([copy.deepcopy(wrapped)], {"model": wrapped}, [wrapped],
                                    "train.py")
    assert candidate.name == "model"
    assert isinstance(candidate.build(), nn.Sequential)
