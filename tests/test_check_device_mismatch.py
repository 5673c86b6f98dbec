"""The device-mismatch check: the crash translated, and the device bugs a CPU hides."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_ran_quiet
from torchdoctor.checks.device_mismatch import DeviceMismatchCheck
from torchdoctor.diagnoses.devices import DeviceError, parse_device_error
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate, TrainingSetup
from torchdoctor.engine.runner import diagnose, diagnose_model
from torchdoctor.findings import Finding, Report, Severity
from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ErrorRecord,
    ModuleCall,
    ModuleInfo,
    RunStatus,
    ScriptRun,
    TensorSummary,
)

CHECK = "device-mismatch"
CUDA = "works on CPU, crashes on CUDA"
EMULATED = "(found with an emulated GPU)"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"


def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]


def _setup(features: int = 8) -> TrainingSetup:
    return TrainingSetup(lambda: (torch.randn(4, features), torch.randint(0, 2, (4,))),
                         nn.CrossEntropyLoss, lambda params: torch.optim.SGD(params, lr=0.1))


def _run(model: nn.Module, verbose: bool = False) -> list[Finding]:
    ctx = CheckContext("t", CheckOptions(verbose=verbose), _setup(),
                       models=[ModelCandidate.from_instance("Net", "test", model)])
    return DeviceMismatchCheck().run(ctx)


class Block(nn.Module):
    """Scales its input; ``registered=False`` keeps the scale as a plain attribute."""

    def __init__(self, registered: bool) -> None:
        super().__init__()
        if registered:
            self.register_buffer("scale", torch.full((8,), 2.0))
        else:
            self.scale = torch.full((8,), 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x))


class Heads(nn.Module):
    """Two linear layers, kept in a plain list (the bug) or an nn.ModuleList."""

    def __init__(self, plain: bool) -> None:
        super().__init__()
        layers = [nn.Linear(8, 8), nn.Linear(8, 2)]
        self.layers = layers if plain else nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# -- the example programs -----------------------------------------------------------------

def test_example_bug_is_found_without_a_gpu(example_report: Callable[[str], Report]) -> None:
    """Script mode with an emulated GPU: the line that mixes, and the line that made the
    CPU tensor (model mode, which would say it again from the meta device, stays out)."""
    found = _mine(example_report("device_mismatch"))
    assert len(found) == 1
    finding = found[0]
    assert finding.severity is Severity.ERROR and EMULATED in finding.message
    assert finding.location.endswith("device_mismatch.py:27")  # the torch.cat line
    assert "device_mismatch.py:26 by torch.ones(...) without device=" in finding.message
    assert "device=x.device" in finding.hint


#: the example variants: (program, the line that mixes, words of the message, of the fix)
VARIANTS = [
    ("device_mismatch_labels", 36, "a DataLoader batch (fetched at", "labels.to(device)"),
    ("device_mismatch_class_weights", 39, "class_weights.py:16 by torch.tensor(...)",
     "t = t.to(device)"),
    ("device_mismatch_noise", 36, "noise.py:34 by torch.randn(...)", "torch.randn_like(x)"),
    ("device_mismatch_arange", 24, "arange.py:23 by torch.arange(...)",
     "torch.arange(..., device=x.device)"),
    ("device_mismatch_attribute", 26, "MaskedMLP.mask is a plain tensor attribute",
     'self.register_buffer("mask", ...)'),
    ("device_mismatch_layer_list", 27, "kept in DeepMLP.hidden, a plain Python list",
     "self.hidden = nn.ModuleList([...])"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("program", "line", "words", "fix"), VARIANTS,
                         ids=[v[0] for v in VARIANTS])
def test_gpu_only_bug_is_found_in_script_mode_at_its_line(
        program: str, line: int, words: str, fix: str,
        example_report: Callable[[str], Report]) -> None:
    report = example_report(program)
    found = _mine(report)
    assert len(found) == 1, [f.message for f in found]
    finding = found[0]
    assert finding.severity is Severity.ERROR and EMULATED in finding.message
    assert finding.location.endswith(f"{program}.py:{line}")
    assert words in finding.message and fix in finding.hint
    assert report.crashed == []


@pytest.mark.slow
@pytest.mark.parametrize("program", [v[0] for v in VARIANTS])
def test_gpu_only_bug_fixed_is_quiet(program: str,
                                     example_report: Callable[[str], Report]) -> None:
    report = example_report(f"{program}_fixed")
    assert_ran_quiet(report, CHECK)
    assert report.errors == [] and report.crashed == []
    assert any("GPU emulation" in note for note in report.notes)


def test_gpu_emulation_off_runs_the_cpu_branch(tmp_path: Path) -> None:
    """``--gpu-emulation off``: the script takes its CPU branch, nothing is emulated."""
    report = diagnose(str(BUGS / "device_mismatch_labels.py"), select=[CHECK],
                      options=CheckOptions(gpu_emulation="off"))
    assert_ran_quiet(report, CHECK)
    assert not any("GPU emulation" in note for note in report.notes)


# -- the crash, translated --------------------------------------------------------------------

META_PROGRAM = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    device = torch.device("meta")  # stands in for "cuda" on a machine without a GPU

    def main():
        data = TensorDataset(torch.randn(64, 20), torch.randint(0, 3, (64,)))
        model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
        MOVE_MODEL
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for inputs, targets in DataLoader(data, batch_size=16):
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()

    if __name__ == "__main__":
        main()
"""


def test_crash_is_translated_and_pinned_to_the_module(tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(META_PROGRAM).replace("MOVE_MODEL", "pass"))
    report = diagnose(str(path), select=[CHECK])
    found = _mine(report)
    assert len(found) == 1
    finding = found[0]
    assert finding.explains_crash and finding.severity is Severity.ERROR
    assert finding.location.startswith("0 (Linear, in_features=20")
    assert "input on meta but its weights are on cpu" in finding.message
    assert "model.to(device)" in finding.hint and "inputs.to(device)" in finding.hint
    assert report.run_findings == []  # the crash is explained: no generic "script raised"


def test_crash_from_cuda_messages_without_module() -> None:
    message = ("Expected all tensors to be on the same device, but found at least two "
               "devices, cuda:0 and cpu! (when checking argument for argument target)")
    error = ErrorRecord("RuntimeError", message, CodeLocation("train.py", 40))
    run = ScriptRun("train.py", status=RunStatus.CRASHED, error=error)
    found = [DeviceMismatchCheck().explain_crash(error, run)]
    assert [f.location for f in found] == ["train.py:40"]
    assert "cuda:0 and cpu" in found[0].message and found[0].explains_crash


def test_conv_type_error_names_the_layer() -> None:
    conv = ModuleInfo("features.0", "Conv2d", "1, 16, kernel_size=(3, 3), stride=(1, 1)")
    call = ModuleCall(conv, (TensorSummary((8, 1, 28, 28), "torch.float32", "cpu"),))
    message = ("Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) "
               "should be the same or input should be a MKLDNN tensor and weight is a dense "
               "tensor")
    error = ErrorRecord("RuntimeError", message, CodeLocation("train.py", 12), [call])
    run = ScriptRun("train.py", status=RunStatus.CRASHED, error=error)
    found = [DeviceMismatchCheck().explain_crash(error, run)]
    assert found[0].location == conv.describe()
    assert "features.0 got its input on cpu but its weights are on cuda" in found[0].message


@pytest.mark.parametrize(("message", "expected"), [
    ("Expected all tensors to be on the same device, but got mat2 is on cpu, different "
     "from other tensors on cuda:0 (when checking argument in method wrapper_CUDA_mm)",
     DeviceError("cpu", "cuda:0")),
    ("Tensor on device cpu is not on the expected device meta!", DeviceError("cpu", "meta")),
    ("Input type (CUDAFloatType) and weight type (CPUFloatType) should be the same",
     DeviceError("cuda", "cpu")),
    ("Input and parameter tensors are not at the same device, found input tensor at cuda:0 "
     "and parameter tensor at cpu", DeviceError("cuda:0", "cpu")),
    # same device, different dtype: a dtype error, not ours
    ("Input type (torch.cuda.DoubleTensor) and weight type (torch.cuda.FloatTensor) should "
     "be the same", None),
    ("mat1 and mat2 shapes cannot be multiplied (64x10 and 20x3)", None),
])
def test_parse_device_error(message: str, expected: DeviceError | None) -> None:
    assert parse_device_error(message) == expected


# -- what a CPU hides (model mode) --------------------------------------------------------------

def test_plain_tensor_attribute_used_in_forward() -> None:
    found = _run(Net(Block(registered=False)))
    assert len(found) == 1
    finding = found[0]
    assert finding.severity is Severity.ERROR and finding.location == "Net: block.scale"
    assert "plain tensor attribute (8,)" in finding.message and CUDA in finding.message
    assert "test_check_device_mismatch.py:" in finding.message  # where it is assigned
    assert finding.hint.startswith('self.register_buffer("scale"')


def test_registered_buffer_is_quiet() -> None:
    assert _run(Net(Block(registered=True))) == []


def test_submodules_in_a_plain_list() -> None:
    found = _run(Heads(plain=True))
    assert len(found) == 1
    assert found[0].severity is Severity.ERROR and found[0].location == "Net: layers"
    assert "model.parameters()" in found[0].message and "nn.ModuleList" in found[0].hint
    assert _run(Heads(plain=False)) == []


def test_unused_attribute_is_a_warning_and_trainable_one_an_error() -> None:
    found = {f.location: f for f in _run(_Wrapper(nn.Linear(8, 2)))}
    assert len(found) == 2
    assert found["Net: table"].severity is Severity.WARNING
    assert found["Net: temperature"].severity is Severity.ERROR
    assert "optimizer never sees it" in found["Net: temperature"].message
    assert "nn.Parameter" in found["Net: temperature"].hint


class _Wrapper(nn.Module):
    """A user module holding an unused table and an unregistered trainable tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.table = torch.ones(3)
        self.temperature = torch.ones(1, requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class _Cache(nn.Module):
    """Keeps its last activation (reassigned in every forward) and uses CPU scalars and
    CPU indices, all of which work on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)
        self.last = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[torch.arange(x.shape[0])] * torch.tensor(2.0)
        self.last = self.fc(rows)
        return self.last


def test_caches_scalars_and_cpu_indices_are_quiet() -> None:
    model = _Cache()
    with torch.no_grad():  # (a cached activation with a graph could not be deep-copied)
        model(torch.randn(2, 8))  # the snapshot holds a cached activation
    assert _run(model) == []


class _Item(nn.Module):
    """Calls .item(), which no meta tensor supports: the meta run cannot finish."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) / max(1.0, x.abs().max().item())


def test_meta_run_failing_for_other_reasons_is_not_reported() -> None:
    assert _run(_Item()) == []
    (info,) = _run(_Item(), verbose=True)
    assert info.severity is Severity.INFO and "meta device" in info.message


def test_users_model_is_untouched() -> None:
    model = Net(Block(registered=False))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = diagnose_model(model, batch=(torch.randn(4, 8), torch.randint(0, 2, (4,))),
                            select=[CHECK], name="Net")
    assert _mine(report) and not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.block.scale.device.type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_example_claim_holds_on_a_real_gpu() -> None:
    """What the meta run predicts: the bug program's model crashes on CUDA, the fixed
    one does not."""
    import runpy

    bug = runpy.run_path(str(BUGS / "device_mismatch.py"))["MLP"]().cuda()
    fixed = runpy.run_path(str(BUGS / "device_mismatch_fixed.py"))["MLP"]().cuda()
    images = torch.rand(4, 1, 28, 28, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        bug(images)
    assert fixed(images).shape == (4, 10)
