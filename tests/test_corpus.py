"""The corpus: programs shaped like well-known public PyTorch programs (pytorch/examples,
the tutorials, nanoGPT, raw-tensor regressions, RL loops), written here. Each healthy
one must be diagnosed with no error finding and no crashed check; each buggy variant
(the healthy file with one line changed, as a user would get it wrong) must be found
by the check that owns the bug."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Outcome, Report, Severity

CORPUS = Path(__file__).resolve().parent / "corpus"
PROGRAMS = sorted(p.name for p in CORPUS.glob("*.py"))

#: (program, line as written, line as the buggy variant has it, the check that finds it)
BUGGY = [
    ("mnist_cnn.py", "        optimizer.zero_grad()\n", "", "missing-zero-grad"),
    ("vae.py", "return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar",
     "return self.fc4(F.relu(self.fc3(z))), mu, logvar", "loss-function"),
    ("dcgan.py", "        netD.zero_grad()\n", "", "missing-zero-grad"),
    ("word_language_model.py", "        model.zero_grad()\n", "", "missing-zero-grad"),
    ("siamese_network.py", "criterion = nn.BCELoss()", "criterion = nn.BCEWithLogitsLoss()",
     "loss-function"),
    ("forward_forward.py", "            self.opt.zero_grad()\n", "", "missing-zero-grad"),
    ("mnist_hogwild.py", "        optimizer.zero_grad()\n", "", "missing-zero-grad"),
    ("regression.py", "    fc.zero_grad()\n", "", "missing-zero-grad"),
    ("time_sequence_prediction.py", "loss = criterion(seq(input), target)",
     "loss = criterion(seq(input), target[:, :1])", "shape-mismatch"),
    ("quickstart.py", "nn.Linear(28 * 28, 64)", "nn.Linear(28 * 14, 64)", "shape-mismatch"),
    ("cifar10_classifier.py", "nn.Linear(16 * 5 * 5, 32)", "nn.Linear(16 * 4 * 4, 32)",
     "shape-mismatch"),
    ("transfer_learning.py",
     'model_conv.train() if phase == "train" else model_conv.eval()', "model_conv.train()",
     "eval-mode"),
    ("seq2seq_attention.py", "        decoder_optimizer.zero_grad()\n", "",
     "missing-zero-grad"),
    ("char_rnn.py", "    rnn.zero_grad()\n", "", "missing-zero-grad"),
    ("linear_regression_raw.py", "        w.grad.zero_()\n        b.grad.zero_()\n", "",
     "missing-zero-grad"),
    ("logistic_regression_raw.py", "torch.log(p + 1e-7) + (1 - y) * torch.log(1 - p + 1e-7)",
     "torch.log(p) + (1 - y) * torch.log(1 - p)", "nan-loss"),
    ("nanogpt.py", "F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ",
     "F.cross_entropy(logits, targets, ", "shape-mismatch"),
    ("policy_gradient.py", "    optimizer.zero_grad()\n", "", "missing-zero-grad"),
    ("actor_critic.py", "    optimizer.zero_grad()\n", "", "missing-zero-grad"),
    ("teacher_student.py", "teacher.eval()\n", "", "eval-mode"),
    ("amp_schedulers.py", "            optimizer.zero_grad()\n", "", "missing-zero-grad"),
    ("custom_train_override.py", "nn.Module.train(net, False)", "pass", "eval-mode"),
    ("train_false.py", "    model.train(True)\n", "", "eval-mode"),
    ("compiled_model.py", "    optimizer.zero_grad()\n", "", "missing-zero-grad"),
    ("cuda_amp_checkpoint.py",
     "            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)"
     "\n            optimizer", "            xb = xb.to(device, non_blocking=True)\n"
     "            optimizer", "device-mismatch"),
]


def _diagnose(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Report:
    monkeypatch.chdir(tmp_path)  # the programs' root="data" resolves here, not in the repo
    return diagnose(str(path))


def _errors(report: Report) -> list[str]:
    findings = [f for r in report.checks for f in r.findings] + list(report.run_findings)
    return [f"{f.check}: {f.message} ({f.location})" for f in findings
            if f.severity is Severity.ERROR]


@pytest.mark.slow
@pytest.mark.parametrize("program", PROGRAMS)
def test_healthy_program_has_no_error_and_no_crash(program: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   one_thread: None) -> None:
    report = _diagnose(CORPUS / program, monkeypatch, tmp_path)
    crashed = [f"{r.id}: {r.detail}" for r in report.checks
               if r.outcome is Outcome.CRASHED]
    assert crashed == []
    assert _errors(report) == []
    assert any(r.outcome is Outcome.PASSED for r in report.checks)


@pytest.mark.slow
@pytest.mark.parametrize(("program", "old", "new", "check_id"), BUGGY,
                         ids=[f"{b[0]}-{b[3]}" for b in BUGGY])
def test_buggy_variant_is_found_by_its_check(program: str, old: str, new: str, check_id: str,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            one_thread: None) -> None:
    source = (CORPUS / program).read_text()
    assert source.count(old) == 1, "the variant must change exactly one place"
    buggy = tmp_path / program
    buggy.write_text(source.replace(old, new))
    report = _diagnose(buggy, monkeypatch, tmp_path)
    found = [f.check for r in report.checks for f in r.findings
             if f.severity is Severity.ERROR]
    assert check_id in found, _errors(report)


def test_every_family_has_a_buggy_variant() -> None:
    assert sorted({b[0] for b in BUGGY}) == PROGRAMS
