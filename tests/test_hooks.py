"""Tests of torchdoctor.hooks: shape tracing, non-finite localisation, activation stats.

Each detector runs on a model WITH the fault (must be found, and agree with a manual
computation of the same quantity) and on the same model FIXED (must stay quiet). Every
hook set must leave the model exactly as it found it: no hooks, no attributes, no
tensors kept alive.
"""

from __future__ import annotations

import gc
import runpy
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.models import image_mlp
from torchdoctor.errors import NonFiniteError
from torchdoctor.hooks import (
    ActivationStats,
    NonFiniteTracer,
    ShapeRecord,
    ShapeTracer,
    localize_nonfinite,
)
from torchdoctor.scriptrun.observations import TensorSummary

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "instruments_hooks.py"

# ---------------------------------------------------------------- helpers


def mlp(flatten: bool = True) -> nn.Sequential:
    return image_mlp(16, flatten=flatten)


def hooks_of(model: nn.Module) -> Iterator[tuple[str, dict]]:
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_forward_hooks_with_kwargs",
                     "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
            yield f"{name}.{attr}", getattr(module, attr)


def assert_clean(model: nn.Module, attrs_before: dict[str, set[str]]) -> None:
    """No hook left on any module or parameter, and no attribute added to a module."""
    left = {name: dict(hooks) for name, hooks in hooks_of(model) if hooks}
    assert left == {}
    for name, param in model.named_parameters():
        assert param._backward_hooks is None, name
        assert not param._post_accumulate_grad_hooks, name
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs_before


def attrs(model: nn.Module) -> dict[str, set[str]]:
    return {name: set(vars(module)) for name, module in model.named_modules()}


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


class Log(nn.Module):
    """log(x): NaN for negative x, -inf at 0 (the faulty module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class SafeLog(nn.Module):
    """The fix: log of a clamped value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.clamp_min(1e-6))


class Sqrt(nn.Module):
    """sqrt(x): finite at 0 but its derivative there is infinite."""

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x + self.eps)


class WhereLog(nn.Module):
    """The torch.where trap: finite output, but log's gradient at 0 is 0/0 = NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.log(x), torch.zeros_like(x))


def log_model(fixed: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), SafeLog() if fixed else Log(), nn.Linear(8, 3))


def sqrt_model(eps: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Sqrt(eps), nn.Linear(4, 2))
    with torch.no_grad():  # the first layer outputs exactly 0: sqrt'(0) = inf
        model[0].weight.zero_()
        model[0].bias.zero_()
    return model


def manual_first_nonfinite(model: nn.Sequential, x: torch.Tensor) -> str | None:
    """The first child of a Sequential whose output is non-finite, by plain forward."""
    with torch.no_grad():
        for name, child in model.named_children():
            x = child(x)
            if not torch.isfinite(x).all():
                return name
    return None


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor reachable from a record (dataclasses, tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for f in value.__dataclass_fields__ for t in tensors_in(getattr(value, f))]
    return []


# ---------------------------------------------------------------- ShapeTracer


def test_shape_tracer_records_match_a_manual_forward() -> None:
    model = mlp()
    x = images()
    with ShapeTracer(model) as tracer:
        model(x)
    expected, h = [], x
    for name, child in model.named_children():
        out = child(h)
        expected.append((name, type(child).__name__, tuple(h.shape), tuple(out.shape)))
        h = out
    got = [(r.qualname, r.type_name, r.inputs[0].shape, r.outputs[0].shape)
           for r in tracer.records]
    assert got[0] == ("", "Sequential", (4, 1, 28, 28), (4, 10))
    assert got[1:] == expected
    assert [r.depth for r in tracer.records] == [0, 1, 1, 1, 1]
    assert tracer.records[2].inputs[0].dtype == "torch.float32"
    assert tracer.records[2].inputs[0].device == "cpu"
    assert tracer.failed_at is None


class Shared(nn.Module):
    """One ReLU called twice, a dict output, keyword and non-tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(6, 5), nn.Linear(5, 3), nn.ReLU()
        self.pair = Pair()

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> dict[str, Any]:
        h = self.relu(self.fc2(self.relu(self.fc1(x))))
        a, b = self.pair(h, 3, mask=h > 0)
        return {"out": a * scale, "parts": [b], "note": "text"}


class Pair(nn.Module):
    def forward(self, x: torch.Tensor, repeat: int, *, mask: torch.Tensor) -> tuple:
        return x.repeat(1, repeat), mask


def test_shape_tracer_handles_repeats_structures_and_kwargs() -> None:
    model = Shared()
    with ShapeTracer(model) as tracer:
        model(torch.randn(2, 6), scale=2.0)
    calls = [r.qualname for r in tracer.records]
    assert calls == ["", "fc1", "relu", "fc2", "relu", "pair"]
    assert [r.outputs[0].shape for r in tracer.records if r.qualname == "relu"] == [(2, 5),
                                                                                    (2, 3)]
    pair = tracer.records[-1]
    assert [s.shape for s in pair.inputs] == [(2, 3), (2, 3)]  # x and mask; 3 skipped
    assert [s.dtype for s in pair.outputs] == ["torch.float32", "torch.bool"]
    assert [s.shape for s in tracer.records[0].outputs] == [(2, 9), (2, 3)]
    table = tracer.table()
    assert "relu" in table and "(2, 9), (2, 3)" in table and "bool cpu" in table
    assert tracer.table(fmt="markdown").startswith("| #")


def test_shape_tracer_names_the_module_where_forward_raised() -> None:
    model = nn.Sequential(nn.Sequential(mlp(flatten=False)))
    before = attrs(model)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        with ShapeTracer(model) as tracer:
            model(images())
    assert tracer.failed_at is not None
    assert tracer.failed_at.module.qualname == "0.0.0"
    assert tracer.failed_at.module.type_name == "Linear"
    assert "in_features=784" in tracer.failed_at.module.detail
    assert tracer.failed_at.inputs[0].shape == (4, 1, 28, 28)
    assert [c.module.qualname for c in tracer.failed_stack] == ["", "0", "0.0", "0.0.0"]
    assert "mat1 and mat2" in tracer.failure
    assert [r.raised for r in tracer.records] == [True] * 4
    assert "raised" in tracer.table()
    assert_clean(model, before)


def test_shape_tracer_fixed_model_has_no_failure() -> None:
    model = nn.Sequential(nn.Sequential(mlp(flatten=True)))
    with ShapeTracer(model) as tracer:
        model(images())
    assert tracer.failed_at is None and tracer.failure == ""
    assert not any(r.raised for r in tracer.records)


def test_shape_tracer_records_a_later_failure_after_a_caught_one() -> None:
    model = nn.ModuleDict({"a": nn.Linear(3, 2), "b": nn.Linear(5, 2)})
    with ShapeTracer(model) as tracer:
        with pytest.raises(RuntimeError):
            model["a"](torch.ones(1, 4))
        assert tracer.failed_at is not None and tracer.failed_at.module.qualname == "a"
        model["a"](torch.ones(1, 3))
        with pytest.raises(RuntimeError):
            model["b"](torch.ones(1, 4))
    assert tracer.failed_at is not None and tracer.failed_at.module.qualname == "b"


def test_shape_tracer_caps_records_and_holds_no_tensors() -> None:
    model = mlp()
    with ShapeTracer(model, max_records=7) as tracer:
        for _ in range(3):
            model(images(2))
    assert len(tracer.records) == 7 and tracer.dropped == 3 * 5 - 7
    assert all(r.outputs for r in tracer.records)  # outputs filled for the kept calls
    assert tensors_in(tracer.records) == []
    assert isinstance(tracer.records[0], ShapeRecord)


def test_hook_set_cannot_be_entered_twice_and_can_be_reused() -> None:
    model = mlp()
    tracer = ShapeTracer(model)
    with tracer:
        with pytest.raises(RuntimeError, match="already active"):
            tracer.__enter__()
        model(images(1))
    assert not tracer.active
    with tracer:
        model(images(2))
    assert tracer.records[0].inputs[0].shape == (2, 1, 28, 28)  # records start afresh
    assert_clean(model, attrs(mlp()))


# ---------------------------------------------------------------- NonFiniteTracer


def test_nonfinite_tracer_finds_the_module_that_made_the_nan() -> None:
    model = log_model()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    expected = manual_first_nonfinite(model, x)
    assert expected == "1"  # log of negative Linear outputs
    with NonFiniteTracer(model) as tracer:
        model(x).sum().backward()
    assert tracer.found
    assert tracer.first_gradient is not None  # a consequence: not reported as a cause
    assert [f.location for f in tracer.findings()] == ["1 (Log)"]
    assert tracer.first_output is not None
    assert tracer.first_output.qualname == expected
    assert tracer.first_output.module.type_name == "Log"
    assert tracer.first_output.inputs_finite is True
    assert tracer.first_output.summary.finite is False
    assert tracer.model_inputs_finite is True


def test_nonfinite_tracer_stays_quiet_on_the_fixed_model() -> None:
    model = log_model(fixed=True)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    assert manual_first_nonfinite(model, x) is None
    with NonFiniteTracer(model) as tracer:
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
    assert not tracer.found
    assert tracer.findings() == []
    tracer.raise_if_found()


def test_nonfinite_tracer_tells_a_received_nan_from_a_made_one() -> None:
    model = log_model(fixed=True)
    x = torch.randn(8, 4)
    x[0, 0] = float("nan")
    with NonFiniteTracer(model) as tracer:
        model(x)
    assert tracer.first_output is not None
    assert tracer.first_output.qualname == "0"
    assert tracer.first_output.inputs_finite is False
    assert tracer.model_inputs_finite is False
    with pytest.raises(NonFiniteError, match="inputs already hold NaN"):
        tracer.raise_if_found()


class InplaceLog(nn.Module):
    """An in-place module: its output overwrites its input."""

    inplace = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.log_()


def test_nonfinite_tracer_checks_inplace_inputs_before_the_call() -> None:
    model = nn.Sequential(InplaceLog())
    with NonFiniteTracer(model, gradients=False) as tracer:
        model(torch.tensor([[-1.0, 2.0]]))
    assert tracer.first_output is not None
    assert tracer.first_output.inputs_finite is True  # the input was finite before


def test_nonfinite_tracer_finds_the_first_nonfinite_gradient() -> None:
    model = sqrt_model()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 0])
    reference = sqrt_model()  # plain autograd on an identical model
    F.cross_entropy(reference(x), y).backward()
    bad = {n for n, p in reference.named_parameters() if not torch.isfinite(p.grad).all()}
    assert bad == {"0.weight", "0.bias"}
    with NonFiniteTracer(model) as tracer:
        F.cross_entropy(model(x), y).backward()
    assert tracer.first_output is None  # the forward was finite
    assert tracer.first_gradient is not None
    assert tracer.first_gradient.qualname in bad
    assert tracer.first_gradient.module.qualname == "0"
    assert tracer.first_gradient.inputs_finite is True  # the weights themselves are fine
    [finding] = tracer.findings()
    assert finding.check == "nan-loss" and finding.location in bad


def test_nonfinite_tracer_gradients_quiet_when_fixed() -> None:
    model = sqrt_model(eps=1e-6)
    with NonFiniteTracer(model) as tracer:
        F.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 1, 0, 1, 0])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert not tracer.found


def test_hook_sets_remove_every_hook_even_after_an_exception() -> None:
    model = sqrt_model()
    before = attrs(model)
    for hook_set in (NonFiniteTracer, ShapeTracer, ActivationStats):
        with pytest.raises(ValueError, match="user code"):
            with hook_set(model):
                F.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 1])).backward()
                raise ValueError("user code failed")
        assert_clean(model, before)
    with NonFiniteTracer(model), ShapeTracer(model), ActivationStats(model):
        F.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 1])).backward()
    assert_clean(model, before)


def test_nonfinite_tracer_reset_rearms() -> None:
    model = log_model()
    with NonFiniteTracer(model) as tracer:
        model(torch.full((2, 4), -5.0))
        first = tracer.first_output
        tracer.reset()
        assert not tracer.found
        model(torch.full((2, 4), -5.0))
    assert first is not None and tracer.first_output == first


# ---------------------------------------------------------------- localize_nonfinite


def test_localize_finds_the_activation_and_leaves_the_model_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), Log(), nn.Linear(8, 3))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x_before = x.clone()
    report = localize_nonfinite(model, x, nn.CrossEntropyLoss(), y)
    assert report.kind == "activation"
    assert report.first_output is not None and report.first_output.qualname == "2"
    assert report.first_output.inputs_finite is True
    assert report.found and report.findings
    assert report.findings[0].check == "nan-loss"
    # the user's model, data, RNG and grad state are untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before)
    assert_clean(model, attrs(model))


def test_localize_blames_the_loss_when_the_output_is_finite() -> None:
    model = log_model(fixed=True)
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])

    def bad_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = out.softmax(dim=1) * 0  # log(0): the loss itself makes the inf
        return F.nll_loss(torch.log(probs), target)

    manual = bad_loss(model(x), y)
    assert not torch.isfinite(manual)
    report = localize_nonfinite(model, x, bad_loss, y)
    assert report.output_finite and report.loss_finite is False
    assert report.loss_is_first and report.kind == "loss"
    assert report.first_output is None
    assert any(f.location == "loss" for f in report.findings)


def test_localize_names_the_backward_op_under_anomaly_mode() -> None:
    model = sqrt_model()
    model[1] = WhereLog()
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    report = localize_nonfinite(model, x, nn.CrossEntropyLoss(), y, anomaly=True)
    assert report.backward_op == "LogBackward0" and "returned nan" in report.anomaly
    assert report.kind == "gradient"
    assert any(report.backward_op in f.message for f in report.findings)
    assert not torch.is_anomaly_enabled()
    plain = localize_nonfinite(model, x, nn.CrossEntropyLoss(), y)
    assert plain.first_gradient is not None and plain.first_gradient.qualname.startswith("0.")
    with torch.autograd.set_detect_anomaly(True):
        quiet = localize_nonfinite(model, x, nn.CrossEntropyLoss(), y, anomaly=False)
        assert torch.is_anomaly_enabled()
    assert quiet.error == "" and quiet.backward_op == ""


def test_localize_is_quiet_on_a_healthy_step() -> None:
    model = sqrt_model(eps=1e-6)
    report = localize_nonfinite(model, torch.randn(3, 4), nn.CrossEntropyLoss(),
                                torch.tensor([0, 1, 0]), anomaly=True)
    assert report.kind == "none" and not report.found and report.findings == []
    assert report.loss is not None and report.loss_finite is True


def test_localize_reports_nonfinite_inputs_and_forward_only() -> None:
    x = torch.randn(2, 4)
    x[1, 1] = float("inf")
    report = localize_nonfinite(log_model(fixed=True), x)
    assert report.kind == "input" and not report.inputs_finite
    assert report.loss is None


def test_localize_inside_an_active_tracer_does_not_feed_it() -> None:
    model = log_model()
    x = torch.full((2, 4), -5.0)
    with NonFiniteTracer(model) as outer, ShapeTracer(model) as shapes:
        report = localize_nonfinite(model, x)
        assert not outer.found and shapes.records == []
        assert report.kind == "activation"
        model(x)
    assert outer.found and len(shapes.records) == 4


def test_localize_does_not_modify_inputs_through_inplace_layers() -> None:
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    original = x.clone()
    localize_nonfinite(model, x)
    assert torch.equal(x, original)


# ---------------------------------------------------------------- ActivationStats


def dead_model(dead_units: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Sigmoid())
    with torch.no_grad():
        model[0].bias[:dead_units] = -100.0  # never positive for inputs in [-1, 1]
    return model


def test_dead_relu_fraction_matches_a_manual_computation() -> None:
    model = dead_model(dead_units=5)
    batches = [torch.rand(10, 8) * 2 - 1 for _ in range(3)]
    with ActivationStats(model) as stats:
        for x in batches:
            model(x)
    with torch.no_grad():
        outs = torch.cat([model[1](model[0](x)) for x in batches])
    manual = float((outs.amax(dim=0) <= 0).float().mean())
    assert manual == pytest.approx(5 / 16)
    assert stats.dead_relu == {"1": pytest.approx(manual)}
    assert "5/16" in stats.table()


def test_dead_relu_fixed_model_is_quiet() -> None:
    model = dead_model(dead_units=0)
    with ActivationStats(model) as stats:
        model(torch.rand(64, 8) * 2 - 1)
    assert stats.dead_relu == {"1": 0.0}


def test_saturation_matches_a_manual_computation() -> None:
    model = dead_model(dead_units=0)
    with torch.no_grad():
        model[2].weight.mul_(50.0)  # huge pre-activations: the sigmoid saturates
    x = torch.rand(32, 8) * 2 - 1
    with ActivationStats(model) as stats:
        out = model(x)
    manual = float(((out < 0.01) | (out > 0.99)).float().mean())
    assert manual > 0.5
    assert stats.saturated == {"3": pytest.approx(manual)}
    fixed = dead_model(dead_units=0)
    with ActivationStats(fixed) as quiet:
        fixed(x)
    assert quiet.saturated["3"] < 0.05


def test_tanh_saturation_and_conv_channels() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Tanh())
    with torch.no_grad():
        conv[0].bias.copy_(torch.tensor([-100.0, -100.0, 0.0, 100.0]))
    x = torch.rand(2, 1, 6, 6)
    with ActivationStats(conv) as stats:
        out = conv(x)
    assert stats.dead_relu == {"1": pytest.approx(0.5)}  # channels 0 and 1 along dim 1
    assert stats.saturated["2"] == pytest.approx(float((out.abs() > 0.99).float().mean()))


def test_shared_activation_is_recorded_per_call_position() -> None:
    model = Shared()
    with torch.no_grad():
        model.fc2.bias.fill_(-100.0)  # every unit after fc2 is dead, none after fc1
    with ActivationStats(model) as stats:
        for _ in range(2):
            model(torch.rand(4, 6))
    assert set(stats.dead_relu) == {"relu", "relu#2"}
    assert stats.dead_relu["relu#2"] == 1.0
    assert stats.dead_relu["relu"] < 1.0


# ---------------------------------------------------------------- cost and memory


def live_tensors() -> int:
    """Tensors among the objects gc tracks, leaving out those frozen by ``frozen_gc``."""
    gc.collect()
    # type(), not isinstance(): isinstance asks lazy-module proxies for __class__,
    # which imports them (triton...)
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


@pytest.fixture
def frozen_gc() -> Iterator[None]:
    """Move every existing object out of gc's view (``gc.freeze``) so that counting the
    live tensors scans only what the test created; undone afterwards."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("one_thread", "frozen_gc")
def test_no_tensor_growth_over_200_steps_with_all_tracers_on() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), nn.Tanh())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))

    outputs: list[weakref.ref[torch.Tensor]] = []

    def step() -> None:
        optimizer.zero_grad()
        output = model(x)
        outputs.append(weakref.ref(output))
        F.cross_entropy(output, y).backward()
        optimizer.step()

    with ShapeTracer(model) as shapes, NonFiniteTracer(model) as nan, \
            ActivationStats(model) as stats:
        for _ in range(5):
            step()
        before = live_tensors()
        for _ in range(200):
            step()
        after = live_tensors()
    assert after <= before
    assert all(ref() is None for ref in outputs)  # no activation (or its graph) kept alive
    assert len(shapes.records) == 205 * 5
    assert tensors_in(shapes.records) == [] and not nan.found
    assert stats.dead_relu["1"] < 1.0 and "3" in stats.saturated


def test_summaries_are_plain_data() -> None:
    model = mlp()
    with ShapeTracer(model) as tracer:
        model(images(1))
    assert all(isinstance(s, TensorSummary) for r in tracer.records for s in r.inputs)


def test_example_hooks_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The example program runs (in this process: torch is imported already)."""
    namespace = runpy.run_path(str(EXAMPLE), run_name="example")
    assert namespace["main"]() == 0
    out = capsys.readouterr().out
    assert "raised in 0 (Linear" in out
    assert "first non-finite value: loss" in out
    assert "dead units" in out
