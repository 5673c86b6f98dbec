"""The assertion helpers of torchdoctor.testing: each on a healthy and a broken case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.models import (
    FunctionalDropout,
    Noisy,
    functional_dropout_line,
    image_mlp,
    tabular_mlp,
)
from torchdoctor.findings import Report, Severity
from torchdoctor.testing import (
    TorchDoctorAssertionError,
    assert_eval_deterministic,
    assert_finite,
    assert_healthy,
    assert_no_grad_leak,
    assert_output_shape,
    assert_overfits_batch,
    assert_params_update,
    assert_report_ok,
    assert_same_device,
    assert_valid_batch,
    explain_comparison,
)

SHARED_DATA = Path("/work/shared/data")


@pytest.fixture(autouse=True)
def offline_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real FashionMNIST when the shared copy is there, else synthetic data at once."""
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("TORCHDOCTOR_DATA", str(SHARED_DATA))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 20, generator=generator), torch.randint(0, 4, (16,),
                                                                   generator=generator)


def mlp() -> nn.Module:
    return tabular_mlp(20, 32, 4)


def fast_adam(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=0.05)


def failure(call: object, *args: object, **kwargs: object) -> TorchDoctorAssertionError:
    with pytest.raises(TorchDoctorAssertionError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


def text(error: TorchDoctorAssertionError) -> str:
    """The summary and each finding's message and fix, unwrapped (the table wraps)."""
    return "\n".join([error.summary, *(f"{f.message} | {f.hint}" for f in error.findings)])


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- assert_finite


def test_assert_finite_passes_on_finite_values() -> None:
    assert_finite(torch.ones(3))
    assert_finite({"logits": torch.zeros(2, 2), "aux": [1.0, torch.arange(3)]})
    assert_finite(mlp())


def test_assert_finite_names_the_position_in_a_structure() -> None:
    error = failure(assert_finite, {"logits": torch.tensor([1.0, float("nan")]),
                                    "aux": [2.0, float("inf")]})
    assert [f.location for f in error.findings] == ["value['logits']", "value['aux'][1]"]
    assert "1 NaN and 0 inf among 2 values" in text(error)
    assert error.findings[0].severity is Severity.ERROR


def test_assert_finite_names_the_parameter_and_gradient_of_a_model() -> None:
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    model[0].bias.grad = torch.full((32,), float("inf"))
    error = failure(assert_finite, model)
    found = text(error)
    assert "parameter 2.weight (Linear, shape (4, 32), float32) holds 1 NaN" in found
    assert "gradient of 0.bias" in found and "32 inf" in found
    assert {f.location for f in error.findings} == {"2.weight (Linear)", "0.bias (Linear)"}


# ---------------------------------------------------------------- assert_params_update


def test_params_update_passes_and_leaves_model_optimizer_and_rng_alone(batch: tuple) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = state_of(model)
    rng = torch.get_rng_state()
    assert_params_update(model, batch, optimizer=optimizer)
    assert_params_update(model, batch)
    assert same_state(before, state_of(model))
    assert optimizer.state_dict()["state"] == {}
    assert torch.equal(rng, torch.get_rng_state())
    assert model[0].weight.grad is None


class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)  # self.head is never used


def test_params_update_names_parameters_without_gradient(batch: tuple) -> None:
    error = failure(assert_params_update, WithUnusedLayer(), batch)
    assert [f.location for f in error.findings] == ["head.weight (Linear)", "head.bias (Linear)"]
    assert "2 of 4 trainable parameter(s) did not learn" in text(error)
    assert "head.weight (shape (4, 4))" in text(error) and ".grad is None" in text(error)


def test_params_update_names_parameters_missing_from_the_optimizer(batch: tuple) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)  # forgot the last layer
    error = failure(assert_params_update, model, batch, optimizer=optimizer)
    assert {f.location for f in error.findings} == {"2.weight (Linear)", "2.bias (Linear)"}
    assert "not in the optimizer's param_groups" in text(error)


def test_params_update_explains_a_detached_loss(batch: tuple) -> None:
    def detached_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.detach(), targets)

    error = failure(assert_params_update, mlp(), batch, detached_loss)
    assert len(error.findings) == 4
    assert "the loss does not depend on any trainable parameter" in text(error)
    assert {f.check for f in error.findings} == {"no-gradient"}  # as watch() says it


class ZeroedHead(WithUnusedLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)
        return hidden + 0.0 * self.head(hidden)  # the head gets an all-zero gradient


def test_params_update_sees_through_weight_decay(batch: tuple) -> None:
    model = ZeroedHead()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    error = failure(assert_params_update, model, batch, optimizer=optimizer)
    assert [f.location for f in error.findings] == ["head.weight (Linear)", "head.bias (Linear)"]
    assert "changed only through the optimizer's weight decay or momentum: its gradient " \
           "is exactly zero" in text(error)


def test_params_update_skips_frozen_parameters(batch: tuple) -> None:
    model = mlp()
    model[0].requires_grad_(False)
    assert_params_update(model, batch)


# ---------------------------------------------------------------- assert_overfits_batch


def test_overfits_batch_passes_for_a_healthy_model(batch: tuple) -> None:
    model = mlp()
    before = state_of(model)
    losses = assert_overfits_batch(model, batch, optimizer_factory=fast_adam, steps=100)
    assert losses[-1] < 0.05 * losses[0]
    assert same_state(before, state_of(model))


def test_overfits_batch_fails_with_softmax_before_cross_entropy(batch: tuple) -> None:
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    error = failure(assert_overfits_batch, model, batch, optimizer_factory=fast_adam,
                    steps=40)
    assert "the model cannot fit one batch" in text(error)
    assert "loss by step: 0:" in str(error)
    assert error.findings[0].check == "overfit-one-batch"  # the check's id and words


def test_overfits_batch_reports_parameters_that_never_update(batch: tuple) -> None:
    model = WithUnusedLayer()
    with torch.no_grad():
        model.fc.weight.zero_()
    model.fc.requires_grad_(False)  # nothing left to learn with but the unused head
    error = failure(assert_overfits_batch, model, batch, steps=5)
    assert any(f.location == "head.weight (Linear)" for f in error.findings)


def test_overfits_batch_uses_the_reference_batch_by_default() -> None:
    torch.manual_seed(0)  # a fixed initialisation: 100 steps suffice for it
    model = image_mlp(32)
    losses = assert_overfits_batch(model, optimizer_factory=fast_adam, steps=100)
    assert losses[0] > 1.0


# ---------------------------------------------------------------- assert_no_grad_leak


def good_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple) -> None:
    inputs, targets = batch
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()


def accumulating_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                      batch: tuple) -> None:
    inputs, targets = batch
    for part in range(2):  # two micro-batches, one step, then zero
        F.cross_entropy(model(inputs[part::2]), targets[part::2]).backward()
    optimizer.step()
    optimizer.zero_grad()


def leaking_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple) -> None:
    inputs, targets = batch
    F.cross_entropy(model(inputs), targets).backward()  # no zero_grad anywhere
    optimizer.step()


def test_no_grad_leak_passes_for_zeroing_and_accumulating_steps(batch: tuple) -> None:
    model = mlp()
    before = state_of(model)
    assert_no_grad_leak(model, good_step, batch)
    assert_no_grad_leak(model, accumulating_step, batch)
    assert same_state(before, state_of(model))


def test_no_grad_leak_names_the_parameters_that_carry_gradients(batch: tuple) -> None:
    error = failure(assert_no_grad_leak, mlp(), leaking_step, batch, steps=2)
    assert len(error.findings) == 1
    finding = error.findings[0]
    # the same finding as `torchdoctor check` and watch(): id, words, the step() line
    assert finding.check == "missing-zero-grad"
    step_line = leaking_step.__code__.co_firstlineno + 3
    assert finding.location.endswith(f"test_testing.py:{step_line}")
    shown = finding.message.rpartition("(")[2]  # names in backward order, then "1 more"
    assert shown.endswith(" and 1 more)")
    names = shown.removesuffix(" and 1 more)").split(", ")
    assert len(names) == 3 and set(names) < {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert "optimizer.zero_grad() is never called between steps of SGD" in text(error)
    assert "in 2 calls of leaking_step" in text(error)


def test_no_grad_leak_requires_the_step_to_use_the_given_optimizer(batch: tuple) -> None:
    def no_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple) -> None:
        F.cross_entropy(model(batch[0]), batch[1]).backward()

    error = failure(assert_no_grad_leak, mlp(), no_step, batch)
    assert "never called optimizer.step()" in text(error)


def test_no_grad_leak_copies_a_given_optimizer(batch: tuple) -> None:
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters())
    failure(assert_no_grad_leak, model, leaking_step, batch, optimizer)
    assert optimizer.state_dict()["state"] == {}


# ---------------------------------------------------------------- devices, shapes, batches


def test_same_device_passes_and_fails_on_a_tensor_elsewhere() -> None:
    model = nn.Linear(4, 2)
    assert_same_device(model, torch.zeros(3, 4), {"mask": torch.ones(3)})
    error = failure(assert_same_device, model, torch.zeros(3, 4, device="meta"))
    assert "meta" in text(error)
    assert any("tensors[0]" in f.location or "tensors[0]" in f.message for f in error.findings)


def test_output_shape_passes_with_wildcards_and_fails_with_a_shape_table() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert_output_shape(model, torch.zeros(2, 4), (2, 3))
    assert_output_shape(model, torch.zeros(5, 4), (None, 3))
    error = failure(assert_output_shape, model, torch.zeros(2, 4), (2, 5))
    assert "(2, 3)" in text(error) and "shapes through the model" in str(error)


def test_output_shape_explains_a_forward_that_fails_on_shapes() -> None:
    model = nn.Sequential(nn.Linear(784, 10))
    error = failure(assert_output_shape, model, torch.zeros(2, 1, 28, 28), (2, 10))
    assert error.findings and error.findings[0].check == "shape-mismatch"
    assert "raised" in str(error)  # the shape table marks the module that failed


def test_valid_batch_passes_and_fails_on_raw_pixels_and_bad_labels() -> None:
    images = torch.rand(8, 1, 28, 28)
    assert_valid_batch((images, torch.randint(0, 10, (8,))), num_classes=10)
    error = failure(assert_valid_batch, (images * 255, torch.full((8,), 12)), num_classes=10)
    assert len(error.findings) >= 2


# ---------------------------------------------------------------- assert_eval_deterministic


def test_eval_deterministic_passes_with_dropout_modules(batch: tuple) -> None:
    model = nn.Sequential(nn.Linear(20, 16), nn.Dropout(0.5), nn.Linear(16, 4))
    rng = torch.get_rng_state()
    assert_eval_deterministic(model, batch[0])
    assert model.training and torch.equal(rng, torch.get_rng_state())


def test_eval_deterministic_names_the_forward_code_calling_f_dropout(batch: tuple) -> None:
    error = failure(assert_eval_deterministic, FunctionalDropout(), batch[0])
    finding = error.findings[0]
    assert finding.check == "eval-mode"  # the check's id, words and location
    assert finding.location.endswith(functional_dropout_line())
    assert "the input of fc2 (Linear" in finding.message
    assert "training=self.training" in finding.hint


def test_eval_deterministic_names_a_submodule_with_randomness(batch: tuple) -> None:
    model = nn.Sequential(nn.Linear(20, 4), Noisy(), nn.ReLU())
    error = failure(assert_eval_deterministic, model, batch[0])
    assert error.findings[0].location == "1 (Noisy)"
    assert "different outputs for identical inputs" in error.findings[0].message


# ---------------------------------------------------------------- whole-model diagnosis


def test_assert_report_ok_fails_on_errors_and_on_warnings_when_strict() -> None:
    from torchdoctor.findings import CheckResult, Finding, Outcome

    warning = Finding("eval-mode", Severity.WARNING, "odd", "fc1", "fix it")
    report = Report("m", "model", checks=[CheckResult("eval-mode", Outcome.FAILED,
                                                      findings=[warning])])
    assert assert_report_ok(report) is report
    error = failure(assert_report_ok, report, strict=True)
    assert "1 finding(s)" in error.summary and "eval-mode" in str(error)
    report.checks.append(CheckResult("nan-loss", Outcome.CRASHED, detail="Traceback\nBoom"))
    assert "1 crashed check(s)" in failure(assert_report_ok, report).summary


def test_assert_healthy_passes_for_the_reference_model() -> None:
    from torchdoctor.reference.trainer import FashionMNISTClassifier

    model = FashionMNISTClassifier()
    before = state_of(model)
    report = assert_healthy(model, select=["nan-loss", "eval-mode"])
    assert [r.id for r in report.checks] == ["nan-loss", "eval-mode"]
    assert same_state(before, state_of(model))


class SoftmaxClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.net(x), dim=1)  # bug: CrossEntropyLoss wants logits


def test_assert_healthy_fails_with_the_report() -> None:
    error = failure(assert_healthy, SoftmaxClassifier(), select=["loss-function"])
    assert "loss-function" in str(error)
    assert "torchdoctor found problems in model" in error.summary


# ---------------------------------------------------------------- explain_comparison


def test_explain_comparison_of_shapes() -> None:
    lines = explain_comparison("==", torch.Size([64, 10]), (64, 1))
    assert lines == ["shape (64, 10) == (64, 1)", "dim 1: 10 != 1"]
    lines = explain_comparison("==", torch.Size([64]), torch.Size([64, 1]))
    assert lines is not None and "number of dimensions differs: 1 != 2" in lines


def test_explain_comparison_of_tensors() -> None:
    lines = explain_comparison("==", torch.tensor([1.0, float("nan")]), torch.tensor([1.5, 2.0]))
    assert lines is not None
    assert "left: shape (2,), dtype float32, device cpu, 1 NaN" in lines
    assert "maximum difference: 0.5" in lines
    lines = explain_comparison("==", torch.zeros(2, 3), torch.zeros(4))
    assert lines is not None and lines[-1].startswith("cannot compare element-wise")


def test_explain_comparison_ignores_other_values() -> None:
    assert explain_comparison("==", 1, 2) is None
    assert explain_comparison("==", torch.Size([2]), "two") is None
    lines = explain_comparison("==", torch.tensor(1.0), "x")  # a tensor against a string
    assert lines == ["tensor(1.0) == 'x'", "left: shape (), dtype float32, device cpu",
                     "right: 'x' (str)"]
