"""Script mode on programs without an nn.Module, crashing programs, torchvision datasets
that cannot be downloaded, torch.compile, and the GAN zero_grad pattern (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor.diagnoses.gradcarry import GradCarryDetector
from torchdoctor.diagnoses.manualgrad import ManualUpdateDetector
from torchdoctor.diagnoses.sampling import RandomCalls
from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runner import diagnose
from torchdoctor.errors import TargetError
from torchdoctor.findings import Outcome, Report, Severity
from torchdoctor.scriptrun.bypass import CompileBypass
from torchdoctor.scriptrun.datasets import OfflineDatasets
from torchdoctor.scriptrun.observations import RunStatus, ScriptRun
from torchdoctor.scriptrun.script import run_script

MANUAL_LOOP = """
import torch
torch.manual_seed(0)
x = torch.randn(64, 3)
y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
w = torch.zeros(3, requires_grad=True)
b = torch.zeros(1, requires_grad=True)
for i in range(30):
    loss = ((x @ w + b - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= 0.1 * w.grad
        b -= 0.1 * b.grad
        w.grad.zero_()
        b.grad.zero_()
"""


def _errors(report: Report) -> list[str]:
    findings = [f for r in report.checks for f in r.findings] + list(report.run_findings)
    return [f.check for f in findings if f.severity is Severity.ERROR]


def _outcome(report: Report, check_id: str) -> Outcome:
    return next(r.outcome for r in report.checks if r.id == check_id)


def test_raw_tensor_manual_loop_is_checked_not_refused(write_program) -> None:
    report = diagnose(str(write_program(MANUAL_LOOP)))
    assert _errors(report) == []
    assert _outcome(report, "missing-zero-grad") is Outcome.PASSED
    skipped = next(r for r in report.checks if r.id == "overfit-one-batch")
    assert skipped.outcome is Outcome.SKIPPED and "no nn.Module" in skipped.detail


def test_missing_grad_zero_after_manual_update_is_found(write_program) -> None:
    source = MANUAL_LOOP.replace("        w.grad.zero_()\n        b.grad.zero_()\n", "")
    report = diagnose(str(write_program(source)), select=["missing-zero-grad"])
    finding = report.checks[0].findings[0]
    assert finding.severity is Severity.ERROR
    assert "updated by hand" in finding.message and "w" in finding.message
    assert "w.grad.zero_()" in finding.hint or "b.grad.zero_()" in finding.hint


def test_nonfinite_loss_of_raw_tensors_is_found(write_program) -> None:
    source = MANUAL_LOOP.replace("0.1 * w.grad", "1e3 * w.grad")
    report = diagnose(str(write_program(source)), select=["nan-loss"])
    assert [f.check for f in report.checks[0].findings] == ["nan-loss"]


def test_crash_outside_any_model_is_a_finding_with_its_line(write_program) -> None:
    source = "import torch\nx = torch.randn(4, 3)\nloss = torch.dot(x, x)\n"
    report = diagnose(str(write_program(source)))
    located = [f.location for r in report.checks for f in r.findings] + \
        [f.location for f in report.run_findings]
    assert any(loc.endswith("program.py:3") for loc in located), located
    assert _errors(report)


def test_missing_package_is_the_bad_target(write_program) -> None:
    with pytest.raises(TargetError, match="imports 'no_such_package_xyz'"):
        diagnose(str(write_program("import torch\nimport no_such_package_xyz\n")))


def _dcgan_like(zero_d: bool, confirm_at_step: bool = True) -> GradCarryDetector:
    torch.manual_seed(0)
    d, g = nn.Linear(4, 1), nn.Linear(2, 4)
    opt_d, opt_g = torch.optim.SGD(d.parameters(), lr=0.1), torch.optim.SGD(g.parameters(), lr=0.1)
    detector = GradCarryDetector(confirm_at_step=confirm_at_step)
    for opt in (opt_d, opt_g):
        detector.watch(opt)
    for _ in range(3):
        if zero_d:
            d.zero_grad()
            detector.note_zero_grad(None, list(d.parameters()))
        d(torch.randn(8, 4)).mean().backward()
        detector.before_step(opt_d)
        opt_d.step()
        detector.note_step(opt_d)
        g.zero_grad()
        detector.note_zero_grad(None, list(g.parameters()))
        d(g(torch.randn(8, 2))).mean().backward()  # adds to D's grads too
        detector.before_step(opt_g)
        opt_g.step()
        detector.note_step(opt_g)
    detector.close()
    return detector


def test_gan_generator_backward_into_discriminator_is_not_a_carry() -> None:
    assert _dcgan_like(zero_d=True).records == []
    # judged at the first gradient (watch()'s mode), the same loop looks like a carry
    assert _dcgan_like(zero_d=True, confirm_at_step=False).records
    records = _dcgan_like(zero_d=False).records
    assert records and records[0].optimizer == 0


def test_manual_detector_ignores_accumulation_without_update() -> None:
    w = torch.ones(3, requires_grad=True)
    detector = ManualUpdateDetector(lambda t: False, lambda t: "w")
    for _ in range(3):  # three backward passes, no update: accumulation, not a carry
        loss = (w * 2).sum()
        detector.before_backward(loss, None)
        loss.backward()
        detector.after_backward(False)
    with torch.no_grad():
        w.data -= 0.1 * w.grad  # .data bypasses the version counter: still an update
    loss = (w * 2).sum()
    detector.before_backward(loss, None)
    detector.close()
    assert [r.params for r in detector.records] == [["w"]]


def test_sampling_is_told_from_dropout() -> None:
    x = torch.ones(4, 4)
    with RandomCalls() as calls:
        torch.randn_like(x)
        nn.functional.dropout(x, 0.5, training=False)
    assert calls.sampling_only
    with RandomCalls() as calls:
        nn.functional.dropout(x, 0.5)
    assert calls.dropout_in_training and not calls.sampling_only


def test_compile_is_bypassed_and_restored() -> None:
    original = torch.compile
    run = ScriptRun(path="x.py")
    model = nn.Linear(2, 2)
    with CompileBypass(run):
        assert torch.compile(model) is model
        assert torch.compile(mode="max-autotune")(len) is len
    assert torch.compile is original
    assert any("torch.compile was bypassed" in n for n in run.notes)


@pytest.mark.slow
def test_offline_dataset_gets_a_synthetic_stand_in_then_is_restored(tmp_path: Path,
                                                                     monkeypatch) -> None:
    from torchvision import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHDOCTOR_DATA", raising=False)
    before = (datasets.MNIST.__init__, datasets.CIFAR10.__init__,
              datasets.ImageFolder.__init__)
    run = ScriptRun(path="x.py")
    with OfflineDatasets("import torchvision", None, run):
        mnist = datasets.FashionMNIST("data", train=False, download=True)
        cifar = datasets.CIFAR100("data", train=True, download=True)
        folder = datasets.ImageFolder("data/hymenoptera_data/train")
    image, label = mnist[0]
    assert image.size == (28, 28) and 0 <= label < 10
    assert cifar[0][0].size == (32, 32) and len(set(cifar.targets)) > 10
    assert folder[0][0].mode == "RGB" and folder.classes == ["0", "1"]
    assert (datasets.MNIST.__init__, datasets.CIFAR10.__init__,
            datasets.ImageFolder.__init__) == before
    assert any("synthetic learnable stand-in" in n for n in run.notes)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_offline_dataset_reads_real_files_under_the_data_root(shared_data: Path,
                                                             tmp_path: Path,
                                                             monkeypatch) -> None:
    from torchvision import datasets

    monkeypatch.chdir(tmp_path)
    run = ScriptRun(path="x.py")
    with OfflineDatasets("import torchvision", str(shared_data), run):
        real = datasets.FashionMNIST("data", train=True, download=True)
    assert len(real) > 1000 and len(real) != 1024  # the real subset, not the stand-in
    assert any("real files under the data root" in n for n in run.notes)


def test_bare_matmul_crash_in_data_preparation_is_a_shape_finding(write_program) -> None:
    source = "import torch\nx = torch.randn(8, 4)\nw = torch.randn(3, 5)\nz = x @ w\n"
    report = diagnose(str(write_program(source)), select=["shape-mismatch"])
    finding = report.checks[0].findings[0]
    assert finding.location.endswith("program.py:4")
    assert "matrix product of (8x4) and (3x5)" in finding.message
    assert report.run_findings == []  # explained: no 'unexplained crash' finding


_SCALE = torch.ones(8)


class _GlobalTensorNet(nn.Module):
    """Uses a module-level CPU tensor at three places in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 8)
        self.out = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x.flatten(1)) * _SCALE
        h = h + _SCALE
        h = torch.relu(h) - _SCALE
        return self.out(h)


def test_one_stray_tensor_used_at_many_places_is_one_finding() -> None:
    from torchdoctor.engine.runner import diagnose_model

    report = diagnose_model(_GlobalTensorNet(), select=["device-mismatch"])
    findings = report.checks[0].findings
    assert len(findings) == 1, [f.message for f in findings]
    assert "also used at" in findings[0].message


#: pytorch/examples gcn's shape: a sparse adjacency (COO, or CSR as torch.sparse suggests)
#: multiplied in forward, sparse features as input; torch's statistics ops have no sparse
#: kernels ("aten::ne.Scalar on SparseCPU"), so torchdoctor must not compute on them
SPARSE_GCN = """
import torch, torch.nn as nn
torch.manual_seed(0)
class GCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(20, 4) * 0.1)
    def forward(self, x, adj):
        return torch.sparse.mm(adj, torch.sparse.mm(x, self.w))
x = (torch.rand(50, 20) < 0.2).float().to_sparse()
adj = (torch.eye(50) + (torch.rand(50, 50) < 0.05).float()).LAYOUT
y = torch.randint(0, 4, (50,))
model = GCN()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for _ in range(10):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x, adj), y)
    loss.backward()
    optimizer.step()
"""


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["to_sparse()", "to_sparse_csr()"])
def test_sparse_tensors_in_forward_run_and_are_not_computed_on(write_program,
                                                               layout: str) -> None:
    path = write_program(SPARSE_GCN.replace("LAYOUT", layout))
    run = run_script(path, CheckOptions()).run
    assert run.status is RunStatus.COMPLETED, run.error
    assert [s.shape for s in run.forwards[0].inputs] == [(50, 20), (50, 50)]
    report = diagnose(str(path))
    crashed = [f"{r.id}: {r.detail}" for r in report.checks if r.outcome is Outcome.CRASHED]
    assert crashed == [] and _errors(report) == []
    assert _outcome(report, "params-not-updating") is Outcome.PASSED


#: word-embedding models (word2vec, DLRM): nn.Embedding(sparse=True) gives sparse gradients
SPARSE_GRADIENTS = """
import torch, torch.nn as nn
torch.manual_seed(0)
model = nn.Sequential(nn.EmbeddingBag(100, 16, sparse=True), nn.Linear(16, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
idx, y = torch.randint(0, 100, (50, 6)), torch.randint(0, 4, (50,))
for _ in range(10):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(idx), y)
    loss.backward()
    optimizer.step()
"""


@pytest.mark.slow
def test_sparse_gradients_are_checked_not_crashed_on(write_program) -> None:
    report = diagnose(str(write_program(SPARSE_GRADIENTS)))
    crashed = [f"{r.id}: {r.detail}" for r in report.checks if r.outcome is Outcome.CRASHED]
    assert crashed == [] and _errors(report) == []
    assert _outcome(report, "missing-zero-grad") is Outcome.PASSED
    buggy = SPARSE_GRADIENTS.replace("    optimizer.zero_grad()\n", "")
    report = diagnose(str(write_program(buggy)), select=["missing-zero-grad"])
    assert report.checks[0].outcome is Outcome.FAILED, report.checks[0].detail
    assert _errors(report) == ["missing-zero-grad"]
