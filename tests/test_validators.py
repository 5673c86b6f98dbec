"""Tests of torchdoctor.validators: each validator on a faulty case (a typed error whose
message names the culprit and the fix, carrying findings) and on the fixed case (None).

Where torch itself misbehaves on the faulty input (raises, or silently broadcasts), the
test shows that too, so a validator cannot pass by flagging something harmless.
"""

from __future__ import annotations

import functools
import runpy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.models import ImageMLP
from torchdoctor.errors import (
    BatchError,
    DeviceMismatchError,
    DiagnosisError,
    LossInputError,
    ShapeError,
)
from torchdoctor.findings import Severity
from torchdoctor.scriptrun.observations import ModuleInfo, TensorSummary
from torchdoctor.tensors import summarize
from torchdoctor.validators import (
    broadcast_shape,
    canonical_loss_name,
    check_batch,
    check_devices,
    check_loss_inputs,
    check_output,
    explain_shape_error,
    loss_input_problems,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "instruments_validators.py"

def images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def raises(error: type[DiagnosisError], call, *args, **kwargs) -> DiagnosisError:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    assert info.value.findings, "a validator error carries its findings"
    return info.value


# ---------------------------------------------------------------- check_devices


def test_check_devices_flags_a_meta_batch_on_a_cpu_model() -> None:
    model = ImageMLP(hidden=32)
    x = torch.ones(2, 1, 28, 28, device="meta")  # torch raises on this mix (first meta
    # dispatch costs seconds, so the forward itself is not run here)
    error = raises(DeviceMismatchError, check_devices, model, x, torch.ones(2))
    text = str(error)
    assert "tensors[0] (2, 1, 28, 28) is on meta but the model is on cpu" in text
    assert ".to(device)" in text
    assert error.findings[0].check == "device-mismatch"
    assert error.findings[0].location == "tensors[0]"


def test_check_devices_names_nested_positions_and_stray_parameters() -> None:
    model = ImageMLP(hidden=32)
    model.fc2.to("meta")
    model.register_buffer("scale", torch.ones(1, device="meta"))
    error = raises(DeviceMismatchError, check_devices, model,
                   {"image": torch.ones(2, 784)}, [torch.ones(2), torch.ones(3, device="meta")])
    text = str(error)
    assert "fc2.weight (meta)" in text and "fc2.bias (meta)" in text and "scale (meta)" in text
    assert "tensors[1][1] (3,) is on meta" in text
    assert "tensors[0]['image']" not in text  # that one is on the model's device
    assert "register_buffer" in text


def test_check_devices_passes_when_everything_is_on_one_device() -> None:
    model = ImageMLP(hidden=32)
    assert check_devices(model, images(2), {"y": torch.ones(2)}) is None
    assert check_devices(nn.ReLU(), torch.ones(2, device="meta")) is None
    model(images(2))  # and torch agrees


# ---------------------------------------------------------------- check_batch


def raw_fashion_mnist(root: Path, count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first images of the real subset, read straight from the IDX files (uint8)."""
    raw = root / "FashionMNIST" / "raw"
    pixels = (raw / "t10k-images-idx3-ubyte").read_bytes()[16:16 + count * 784]
    labels = (raw / "t10k-labels-idx1-ubyte").read_bytes()[8:8 + count]
    images_u8 = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(count, 1, 28, 28)
    return images_u8, torch.frombuffer(bytearray(labels), dtype=torch.uint8).long()


@pytest.mark.slow
def test_check_batch_on_real_fashion_mnist(shared_data: Path) -> None:
    raw, labels = raw_fashion_mnist(shared_data)
    error = raises(BatchError, check_batch, (raw, labels), num_classes=10)
    assert "uint8" in str(error) and "ToTensor()" in str(error)
    error = raises(BatchError, check_batch, (raw.float(), labels), num_classes=10)
    assert "raw 0..255" in str(error) and "/ 255" in str(error)
    assert check_batch((raw.float() / 255, labels), num_classes=10) is None  # the fix
    with pytest.warns(UserWarning, match="divided by 255 twice"):
        assert check_batch((raw.float() / 255 / 255, labels), num_classes=10) is None


def test_check_batch_range_on_synthetic_images() -> None:
    pixels = (images() * 255).round()
    error = raises(BatchError, check_batch, [pixels, torch.zeros(64, dtype=torch.long)])
    assert error.findings[0].severity is Severity.ERROR
    assert "mean 0.286" in str(error)
    assert check_batch([pixels / 255, torch.zeros(64, dtype=torch.long)]) is None
    assert check_batch(pixels, reference=False) is None  # not images: range not judged


def test_check_batch_flags_nonfinite_and_constant_inputs() -> None:
    x = images()
    x[3, 0, 5, 5] = float("nan")
    assert "NaN/inf" in str(raises(BatchError, check_batch, x))
    error = raises(BatchError, check_batch, {"image": torch.zeros(8, 1, 28, 28),
                                             "label": torch.arange(8)})
    assert "constant" in str(error)
    assert check_batch({"image": images(8), "label": torch.arange(8)}, num_classes=10) is None


def test_check_batch_flags_labels_out_of_range() -> None:
    x = images(10)
    one_based = torch.arange(1, 11)  # 1..10 for 10 classes
    with pytest.raises(IndexError):  # what torch does with label 10 of 10 classes
        F.cross_entropy(torch.zeros(10, 10), one_based)
    error = raises(BatchError, check_batch, (x, one_based), num_classes=10)
    assert "labels range 1..10 but num_classes=10" in str(error)
    assert "subtract 1" in str(error)
    assert check_batch((x, one_based - 1), num_classes=10) is None
    error = raises(BatchError, check_batch, (x, torch.tensor([0, 3, 12] + [0] * 7)),
                   num_classes=10)
    assert "out_features=13" in str(error)


def test_check_batch_flags_float_and_non_integer_labels() -> None:
    x = images(4)
    float_labels = torch.tensor([0.0, 1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError):  # CrossEntropyLoss rejects float class indices
        F.cross_entropy(torch.zeros(4, 10), float_labels)
    assert "targets.long()" in str(raises(BatchError, check_batch, (x, float_labels),
                                          num_classes=10))
    halves = torch.tensor([0.5, 1.0, 2.0, 3.0])
    assert "non-integer" in str(raises(BatchError, check_batch, (x, halves), num_classes=10))
    soft = torch.full((4, 10), 0.1)  # probability rows are fine
    assert check_batch((x, soft), num_classes=10) is None
    assert check_batch((x, float_labels)) is None  # no num_classes: not classification


def test_check_batch_flags_mismatched_batch_sizes() -> None:
    error = raises(BatchError, check_batch, (images(64), torch.zeros(32, dtype=torch.long)))
    assert "64 samples" in str(error) and "targets 32" in str(error)


# ---------------------------------------------------------------- check_output


def test_check_output_translates_the_missing_flatten() -> None:
    model = ImageMLP(hidden=32, flatten=False)
    error = raises(ShapeError, check_output, model, images(), (None, 10))
    text = str(error)
    assert "fc1 (Linear, in_features=784" in text
    assert "(64, 1, 28, 28)" in text
    assert "flatten first: nn.Flatten() before fc1" in text
    assert isinstance(error.__cause__, RuntimeError)
    assert error.findings[0].check == "shape-mismatch"
    assert check_output(ImageMLP(hidden=32, flatten=True), images(), (None, 10)) is None


def test_check_output_compares_the_output_shape() -> None:
    model = ImageMLP(hidden=32, classes=1)
    error = raises(ShapeError, check_output, model, images(8), (8, 10))
    assert "(8, 1) but (8, 10)" in str(error)
    assert "fc2 (Linear" in str(error) and "out_features=10" in str(error)
    assert check_output(model, images(8), (8, 1)) is None
    assert check_output(model, images(8), (None, None)) is None
    with pytest.raises(ShapeError, match=r"\(8, 1\) but \(8, 1, 1\)"):
        check_output(model, images(8), (8, 1, 1))


class Conv(nn.Module):
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 26 * 26, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)))


def test_check_output_translates_conv_errors_and_restores_the_model() -> None:
    model = Conv(channels=3)
    model.train()
    error = raises(ShapeError, check_output, model, images(4), (None, 10))
    assert "conv (Conv2d" in str(error) and "expects 3 input channels" in str(error)
    assert "in_channels=1" in str(error)
    channels_last = torch.rand(4, 28, 28, 3)
    assert "x.permute(0, 3, 1, 2)" in str(raises(ShapeError, check_output, model,
                                                 channels_last, (None, 10)))
    flat = torch.rand(4, 784)
    assert "x.view(-1, 1, 28, 28)" in str(raises(ShapeError, check_output, model, flat,
                                                 (None, 10)))
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    fitting = torch.rand(4, 3, 28, 28)
    rng = torch.get_rng_state()
    assert check_output(model, fitting, (4, 10)) is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert all(p.grad is None for p in model.parameters())


def test_check_output_reraises_errors_it_does_not_know() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("something else")

    with pytest.raises(ValueError, match="something else"):
        check_output(Broken(), images(2), (2,))


# ---------------------------------------------------------------- explain_shape_error


def error_of(module: nn.Module, x: torch.Tensor) -> BaseException:
    try:
        module(x)
    except RuntimeError as exc:
        return exc
    raise AssertionError("expected a shape error")


def info(qualname: str, module: nn.Module) -> ModuleInfo:
    return ModuleInfo(qualname, type(module).__name__, module.extra_repr())


@pytest.mark.parametrize(("shape", "hint"), [
    ((64, 1, 28, 28), "flatten first: nn.Flatten() before fc1 (Linear)"),
    ((64, 3, 28, 28), "in_features=2352: nn.Linear(2352, 256)"),
    ((64, 100), "set in_features=100 in fc1 (Linear): nn.Linear(100, 256)"),
])
def test_explain_linear_errors(shape: tuple[int, ...], hint: str) -> None:
    layer = nn.Linear(784, 256)
    x = torch.zeros(shape)
    message, got_hint = explain_shape_error(error_of(layer, x), info("fc1", layer),
                                            [summarize(x)])
    assert "fc1 (Linear, in_features=784, out_features=256" in message
    assert str(shape) in message
    assert hint in got_hint


def test_explain_takes_a_message_string_and_unknown_errors() -> None:
    layer = nn.BatchNorm1d(10)
    text = str(error_of(layer, torch.zeros(4, 20)))
    message, hint = explain_shape_error(text, info("bn", layer), [summarize(torch.zeros(4, 20))])
    assert "expects 10 features" in message and "num_features=20" in hint
    try:
        F.cross_entropy(torch.zeros(4, 10), torch.zeros(5, dtype=torch.long))
    except ValueError as exc:
        message, hint = explain_shape_error(exc, None, [])
    assert "batch size 4 but the target has 5" in message and "x.flatten(1)" in hint
    try:
        torch.zeros(64, 1, 28, 28).view(-1, 700)
    except RuntimeError as exc:
        message, _ = explain_shape_error(exc, None, [])
    assert "does not fit" in message
    assert explain_shape_error(RuntimeError("CUDA out of memory"), None, []) == ("", "")


# ---------------------------------------------------------------- check_loss_inputs


def logits_and_labels(n: int = 32, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_softmax_before_cross_entropy() -> None:
    logits, labels = logits_and_labels()
    error = raises(LossInputError, check_loss_inputs, logits.softmax(1), labels,
                   nn.CrossEntropyLoss())
    assert "softmax" in str(error) and "raw logits" in str(error)
    assert error.findings[0].check == "loss-function"
    assert error.findings[0].location == "CrossEntropyLoss"
    assert check_loss_inputs(logits, labels, nn.CrossEntropyLoss()) is None
    assert check_loss_inputs(logits, labels, F.cross_entropy) is None


def test_log_softmax_before_cross_entropy_only_warns() -> None:
    logits, labels = logits_and_labels()
    # mathematically the same loss: log_softmax is idempotent
    assert torch.allclose(F.cross_entropy(logits.log_softmax(1), labels),
                          F.cross_entropy(logits, labels))
    with pytest.warns(UserWarning, match="redundant"):
        assert check_loss_inputs(logits.log_softmax(1), labels, "CrossEntropyLoss") is None


def test_cross_entropy_targets() -> None:
    logits, labels = logits_and_labels()
    with pytest.raises(RuntimeError):
        F.cross_entropy(logits, labels.int())
    assert "needs int64" in str(raises(LossInputError, check_loss_inputs, logits,
                                       labels.int(), nn.CrossEntropyLoss()))
    assert "targets.long()" in str(raises(LossInputError, check_loss_inputs, logits,
                                          labels.float(), nn.CrossEntropyLoss()))
    error = raises(LossInputError, check_loss_inputs, logits, labels + 10, F.cross_entropy)
    assert "[0, 10)" in str(error)
    assert "squeeze(1)" in str(raises(ShapeError, check_loss_inputs, logits,
                                      labels.view(-1, 1), nn.CrossEntropyLoss()))
    ignored = labels.clone()
    ignored[0] = -100  # the default ignore_index is allowed
    assert check_loss_inputs(logits, ignored, nn.CrossEntropyLoss()) is None
    ignored[0] = -1
    assert check_loss_inputs(logits, ignored, nn.CrossEntropyLoss(ignore_index=-1)) is None
    assert check_loss_inputs(logits, logits.softmax(1), nn.CrossEntropyLoss()) is None  # soft


def test_single_output_unit_with_cross_entropy() -> None:
    one = torch.randn(8, 1)
    assert F.cross_entropy(one, torch.zeros(8, dtype=torch.long)) == 0  # nothing to learn
    assert "single output unit" in str(raises(ShapeError, check_loss_inputs, one,
                                              torch.zeros(8, dtype=torch.long), "cross_entropy"))


def test_nll_loss_needs_log_probabilities() -> None:
    logits, labels = logits_and_labels()
    error = raises(LossInputError, check_loss_inputs, logits, labels, nn.NLLLoss())
    assert "raw logits" in str(error) and "LogSoftmax" in str(error)
    assert "probabilities" in str(raises(LossInputError, check_loss_inputs,
                                         logits.softmax(1), labels, F.nll_loss))
    assert check_loss_inputs(logits.log_softmax(1), labels, nn.NLLLoss()) is None


def test_sigmoid_before_bce_with_logits() -> None:
    logits = torch.randn(16, 1, generator=torch.Generator().manual_seed(0))
    targets = (logits > 0).float()
    error = raises(LossInputError, check_loss_inputs, logits.sigmoid(), targets,
                   nn.BCEWithLogitsLoss())
    assert "sigmoid" in str(error)
    assert check_loss_inputs(logits, targets, nn.BCEWithLogitsLoss()) is None
    assert "targets.float()" in str(raises(LossInputError, check_loss_inputs, logits,
                                           targets.long(), nn.BCEWithLogitsLoss()))
    with pytest.raises(ValueError):  # torch refuses (B, 1) against (B,)
        F.binary_cross_entropy_with_logits(logits, targets.view(-1))
    assert "unsqueeze(1)" in str(raises(ShapeError, check_loss_inputs, logits,
                                        targets.view(-1), nn.BCEWithLogitsLoss()))


def test_bce_needs_probabilities() -> None:
    logits = torch.randn(16, 1, generator=torch.Generator().manual_seed(0))
    targets = (logits > 0).float()
    with pytest.raises(RuntimeError):  # BCELoss rejects values outside [0, 1]
        F.binary_cross_entropy(logits, targets)
    assert "BCEWithLogitsLoss" in str(raises(LossInputError, check_loss_inputs, logits,
                                             targets, nn.BCELoss()))
    assert check_loss_inputs(logits.sigmoid(), targets, nn.BCELoss()) is None


def test_mse_broadcasting() -> None:
    prediction = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
    target = torch.randn(8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        broadcast = F.mse_loss(prediction, target)  # silently (8, 8)
    assert not torch.allclose(broadcast, F.mse_loss(prediction, target.view(-1, 1)))
    error = raises(ShapeError, check_loss_inputs, prediction, target, nn.MSELoss())
    assert "broadcast to (8, 8)" in str(error) and "unsqueeze(1)" in str(error)
    assert check_loss_inputs(prediction, target.view(-1, 1), nn.MSELoss()) is None
    assert check_loss_inputs(prediction.view(-1), target, functools.partial(F.l1_loss)) is None
    assert "float" in str(raises(LossInputError, check_loss_inputs, prediction,
                                 target.view(-1, 1).long(), nn.L1Loss()))


# ---------------------------------------------------------------- loss_input_problems


def summary(shape: tuple[int, ...], dtype: str = "torch.float32", **stats: object) -> TensorSummary:
    return TensorSummary(shape, dtype, "cpu", **stats)  # type: ignore[arg-type]


def test_loss_input_problems_from_summaries_only() -> None:
    probs = summary((64, 10), min=0.0, max=0.9, mean=0.1, std=0.1, rows_sum_to_one=True)
    labels = summary((64,), "torch.int64", min=0, max=9)
    [problem] = loss_input_problems("torch.nn.CrossEntropyLoss", probs, labels)
    severity, message, hint = problem
    assert severity == "error" and "softmax" in message and "raw logits" in hint
    assert problem.kind == "probabilities" and problem.severity is Severity.ERROR
    logits = summary((64, 10), min=-3.0, max=3.0, mean=0.0, std=1.0)
    assert loss_input_problems("cross_entropy", logits, labels) == []
    assert loss_input_problems("F.cross_entropy", logits, None) == []
    assert loss_input_problems("MyFancyLoss", probs, labels) == []
    ignored = summary((64,), "torch.int64", min=-1, max=9)
    assert loss_input_problems("CrossEntropyLoss", logits, ignored, {"ignore_index": "-1"}) == []
    assert [p.kind for p in loss_input_problems("CrossEntropyLoss", logits, ignored)] == [
        "target-range"]
    nan = summary((64, 10), finite=False)
    assert [p.kind for p in loss_input_problems("nll_loss", nan, labels)] == ["nonfinite"]
    argmax = summary((64,), "torch.int64", min=0, max=9)
    assert loss_input_problems("mse_loss", argmax, labels)[0][0] == "error"


def test_loss_names_and_broadcast_shape() -> None:
    assert canonical_loss_name("torch.nn.functional.binary_cross_entropy_with_logits") == \
        "BCEWithLogitsLoss"
    assert canonical_loss_name("nn.NLLLoss") == "NLLLoss"
    for a, b in [((8, 1), (8,)), ((3, 1, 5), (4, 5)), ((2, 3), (3, 2)), ((0, 1), (1, 7))]:
        try:
            expected: tuple[int, ...] | None = tuple(torch.broadcast_shapes(a, b))
        except RuntimeError:
            expected = None
        assert broadcast_shape(a, b) == expected


def test_example_validators_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The example program runs (in this process: torch is imported already)."""
    namespace = runpy.run_path(str(EXAMPLE), run_name="example")
    assert namespace["main"]() == 0
    out = capsys.readouterr().out
    assert "[DeviceMismatchError]" in out
    assert "[ShapeError] forgot to flatten" in out
    assert "[LossInputError]" in out
    assert "[ok] fixed: raw logits" in out
