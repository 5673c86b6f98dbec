"""Model mode for any model: inputs and a learnable task synthesised from the model
(torchdoctor.synth), on the model files of tests/corpus_models and a sample of the
torchvision zoo; buggy variants found by the right check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor import Report, diagnose_model
from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Outcome, Severity
from torchdoctor.synth import main_output
from torchdoctor.synth.specs import BATCH, candidate_specs
from torchdoctor.synth.task import make_task

CORPUS = Path(__file__).parent / "corpus_models"
#: the checks that train or run copies of a model
MODEL_CHECKS = ("shape-mismatch", "device-mismatch", "nan-loss", "eval-mode",
                "loss-function", "overfit-one-batch")

#: healthy model files: target and what model mode must have inferred
HEALTHY = [
    ("tabular.py::TabularRegressor", "13 features, regression of 1 output (MSE)"),
    ("conv1d.py::SensorNet", "6x28 sequences, 5 classes"),
    ("lstm_text.py::TextClassifier", "token ids < 1000, length 12, 4 classes"),
    ("transformer_lm.py::TinyLM", "token ids < 65, length 12, 65 classes per position"),
    ("autoencoder.py::AutoEncoder", "1x28x28 images, reconstruction (MSE)"),
    ("cifar_cnn.py::Net", "3x32x32 images, 10 classes"),
    ("small_vit.py::small_vit", "3x32x32 images, 10 classes"),
    ("hf_style.py::Encoder", "20 features, 3 classes"),
    ("hf_style.py::Siamese", "2 x 1x28x28 images, 2 classes"),
]


def _errors(report: Report) -> list[str]:
    return [f"{f.check}: {f.message}" for c in report.checks for f in c.findings
            if f.severity is Severity.ERROR]


def _outcomes(report: Report) -> dict[str, Outcome]:
    return {c.id: c.outcome for c in report.checks}


@pytest.mark.slow
@pytest.mark.parametrize(("target", "inferred"), HEALTHY, ids=[t for t, _ in HEALTHY])
def test_healthy_model_files_get_no_error_and_every_model_check_runs(
        target: str, inferred: str, one_thread: None) -> None:
    report = diagnose(str(CORPUS / target))
    assert report.data == f"synthetic (inferred: {inferred} (cross-entropy))" or \
        report.data == f"synthetic (inferred: {inferred})", report.data
    assert _errors(report) == []
    outcomes = _outcomes(report)
    assert Outcome.CRASHED not in outcomes.values(), report.checks
    for check in MODEL_CHECKS:  # each examined the model: none skipped
        assert outcomes[check] in (Outcome.PASSED, Outcome.FAILED), (check, report.checks)


@pytest.mark.slow
def test_lstm_with_detach_in_forward_is_found_by_overfit_one_batch(one_thread: None) -> None:
    report = diagnose(str(CORPUS / "buggy_lstm_detach.py::DetachedTextClassifier"))
    found = [f for f in _errors(report) if f.startswith("overfit-one-batch")]
    assert found and "get no gradient" in found[0], report.checks


def test_wrong_in_features_in_the_middle_is_found_by_shape_mismatch() -> None:
    report = diagnose(str(CORPUS / "buggy_middle_linear.py::BrokenRegressor"),
                      select=["shape-mismatch"])
    (finding,) = report.checks[0].findings
    assert finding.severity is Severity.ERROR
    assert "net.2" in finding.location and "expects 32 input features" in finding.message
    assert "13 features" in report.data


def test_checks_that_need_the_forward_are_skipped_when_it_fails() -> None:
    report = diagnose(str(CORPUS / "buggy_middle_linear.py::BrokenRegressor"),
                      select=["loss-function", "overfit-one-batch"])
    for result in report.checks:  # examined nothing: skipped, never "passed"
        assert result.outcome is Outcome.SKIPPED, (result.id, result.outcome)
        assert "does not run through the model" in result.detail


def test_a_model_with_no_readable_input_is_skipped_with_the_reason() -> None:
    report = diagnose(str(CORPUS / "opaque.py::Opaque"))
    assert report.data == "none"
    for result in report.checks:
        assert result.outcome is Outcome.SKIPPED
        if result.id in MODEL_CHECKS:
            assert "no input could be inferred for Opaque" in result.detail
            assert "torchdoctor_batch()" in result.detail


def test_the_fashion_mnist_reference_stays_where_it_fits() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    report = diagnose_model(model, select=["shape-mismatch"])
    assert "synthetic (inferred" not in report.data
    assert report.checks[0].outcome is Outcome.PASSED


def test_the_users_batch_overrides_synthesis() -> None:
    model = nn.Linear(5, 3)
    batch = (torch.rand(4, 5), torch.tensor([0, 1, 2, 0]))
    report = diagnose_model(model, batch=batch, select=["shape-mismatch"])
    assert report.data == "batch given"


def test_synthesis_leaves_the_global_rng_alone() -> None:
    model = nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 1))
    before = torch.get_rng_state()
    diagnose_model(model, select=["shape-mismatch"])
    assert torch.equal(before, torch.get_rng_state())


def test_a_model_too_slow_for_the_budget_is_skipped_as_such() -> None:
    report = diagnose_model(nn.Linear(13, 1), options=CheckOptions(timeout=1e-6),
                            select=["overfit-one-batch"])
    (result,) = report.checks
    assert result.outcome is Outcome.SKIPPED
    assert "too large for model mode's time budget" in result.detail


def test_a_model_over_the_parameter_limit_is_skipped_as_such(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torchdoctor.synth.resolve as resolve

    monkeypatch.setattr(resolve, "MAX_CPU_PARAMETERS", 10)
    report = diagnose_model(nn.Linear(13, 1), select=["nan-loss"])
    assert "too large for model mode on the CPU (0M parameters" in report.checks[0].detail


# -- the pieces ------------------------------------------------------------------------
def test_specs_follow_the_first_layer() -> None:
    conv = candidate_specs(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
    assert [s.tensors[0].shape for s in conv[:2]] == [(BATCH, 3, 28, 28), (BATCH, 3, 32, 32)]
    lstm = candidate_specs(nn.LSTM(7, 4))[0].tensors[0]
    assert lstm.shape == (12, BATCH, 7) and lstm.batch_axis == 1
    tokens = candidate_specs(nn.Embedding(50, 4))[0].tensors[0]
    assert tokens.tokens and tokens.high == 50
    transformer = candidate_specs(nn.Transformer(d_model=16, nhead=2, batch_first=True))
    assert [t.shape for t in transformer[0].tensors] == [(BATCH, 12, 16)] * 2


def test_the_task_is_learnable_deterministic_and_matches_the_output() -> None:
    x = torch.rand(BATCH, 20, generator=torch.Generator().manual_seed(0))
    scores = torch.randn(BATCH, 10)
    first, second = make_task(x, scores, 0), make_task(x, scores, 0)
    assert torch.equal(first.targets, second.targets)
    assert first.targets.dtype == torch.long and int(first.targets.max()) < 10
    assert isinstance(first.make_loss(), nn.CrossEntropyLoss)
    assert len(set(first.targets.tolist())) > 1  # derived from the inputs, not constant
    tokens = torch.randint(0, 30, (BATCH, 12))
    lm = make_task(tokens, torch.randn(BATCH, 12, 30), 0)
    assert torch.equal(lm.targets, (tokens * 7 + 3) % 30)
    images = torch.rand(BATCH, 1, 8, 8)
    assert torch.equal(make_task(images, images.clone(), 0).targets, images)
    log_probs = torch.log_softmax(scores, dim=1)
    assert isinstance(make_task(x, log_probs, 0).make_loss(), nn.NLLLoss)


def test_main_output_finds_the_logits() -> None:
    logits = torch.randn(2, 3)
    assert main_output({"hidden": torch.randn(2), "logits": logits}) is logits
    assert main_output((logits, torch.randn(1))) is logits
    assert main_output("no tensor") is None


# -- the torchvision zoo (a fast sample; benchmarks/bench_zoo.py measures all) ------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "googlenet"])
def test_torchvision_models_get_no_error(name: str, one_thread: None) -> None:
    from torchvision import models

    extra = {"init_weights": True} if name == "googlenet" else {}  # else a FutureWarning
    model = models.get_model(name, weights=None, num_classes=10, **extra)
    report = diagnose_model(model, name=name)  # googlenet: a namedtuple output
    assert report.data.startswith("synthetic (inferred: 3x"), report.data
    assert _errors(report) == []
    assert Outcome.CRASHED not in _outcomes(report).values()


def test_auxiliary_heads_are_trained_and_namedtuples_move() -> None:
    from collections import namedtuple

    from torchdoctor.synth import SyntheticLoss
    from torchdoctor.tensors import to_device

    Outputs = namedtuple("Outputs", ["logits", "aux"])
    logits = torch.randn(4, 3, requires_grad=True)
    aux = torch.randn(4, 3, requires_grad=True)
    output = to_device(Outputs(logits, aux), "cpu")
    assert isinstance(output, Outputs)
    SyntheticLoss("cross_entropy")(output, torch.tensor([0, 1, 2, 0])).backward()
    assert logits.grad is not None and aux.grad is not None
