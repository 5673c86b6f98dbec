"""Tests of torchdoctor.watch: each figure against a plain autograd computation, each
finding on a loop with the fault and the same loop fixed, policies, hook removal and
memory. Small models and a few steps each, CPU only."""

from __future__ import annotations

import gc
import runpy
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import torchdoctor
from tests.models import TabularNet
from torchdoctor import GradientError, ModeError, NonFiniteError, Outcome, Severity
from torchdoctor.monitor.watch import KINDS, Thresholds, TorchDoctorWarning, Watch, watch

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
class LogNet(TabularNet):
    """Takes the log of its hidden layer: NaN as soon as a value is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.log(self.fc1(x)))


def batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
          doc: Watch | None = None, *, zero_grad: bool = True, scale: float = 1.0,
          inputs: Callable[[int], torch.Tensor] | None = None) -> list[float]:
    """The plain loop the tests watch; returns the losses."""
    x, y = batch()
    losses = []
    for step in range(steps):
        if zero_grad:
            optimizer.zero_grad()
        out = model(inputs(step) if inputs else x)
        loss = nn.functional.cross_entropy(out, y) * scale
        if doc is not None:
            loss = doc.loss(loss)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def setup(seed: int = 0, lr: float = 0.05, **net: object) -> tuple[TabularNet, torch.optim.SGD]:
    torch.manual_seed(seed)
    model = TabularNet(**net)  # type: ignore[arg-type]
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def checks_of(doc: Watch, check: str) -> list[torchdoctor.Finding]:
    return [f for f in doc.findings if f.check == check]


@pytest.fixture(autouse=True)
def _quiet_default_warnings() -> None:
    # the default policy warns for error findings; tests of warnings opt back in
    warnings.simplefilter("ignore", TorchDoctorWarning)


# ------------------------------------------------------------------- figures vs autograd
def test_group_gradient_norms_match_autograd() -> None:
    torch.manual_seed(0)
    model = TabularNet()
    opt = torch.optim.SGD([{"params": model.fc1.parameters()},
                           {"params": model.fc2.parameters(), "name": "head"}], lr=0.1)
    x, y = batch()
    expected = []
    with watch(model, opt, every=1) as doc:
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            expected.append([
                float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in group])))
                for group in (model.fc1.parameters(), model.fc2.parameters())])
            opt.step()
    assert doc.stats.groups == ["group 0", "head"]
    got = [norm for _, norms in doc.stats.grad_norms for norm in norms]
    assert [s for s, _ in doc.stats.grad_norms] == [1, 2, 3]
    assert got == pytest.approx([norm for norms in expected for norm in norms], rel=1e-5)


def test_every_k_steps_keeps_every_step() -> None:
    model, opt = setup()
    x, y = batch()
    expected = []
    with watch(model, opt, every=4) as doc:
        for _ in range(10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            expected.append(float(torch.linalg.vector_norm(
                torch.cat([p.grad.flatten() for p in model.parameters()]))))
            opt.step()
        assert len(doc.stats.grad_norms) == 8  # read at steps 4 and 8 so far
    assert doc.every == 4
    assert [n[0] for _, n in doc.stats.grad_norms] == pytest.approx(expected, rel=1e-5)


def test_update_ratio_matches_manual() -> None:
    model, opt = setup(lr=0.3)
    x, y = batch()
    expected = []
    with watch(model, opt, update_every=2) as doc:
        for step in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
            opt.step()
            after = torch.cat([p.detach().flatten() for p in model.parameters()])
            if step % 2 == 0:
                expected.append(float((after - before).norm() / after.norm()))
    assert [s for s, _ in doc.stats.update_ratios] == [1, 3]
    assert [r[0] for _, r in doc.stats.update_ratios] == pytest.approx(expected, rel=1e-4)


def test_losses_are_the_mean_of_the_step() -> None:
    model, opt = setup()
    x, y = batch()
    expected = []
    with watch(model, opt) as doc:
        for _ in range(3):
            opt.zero_grad()
            parts = [nn.functional.cross_entropy(model(x[i::2]), y[i::2]) for i in (0, 1)]
            for part in parts:  # gradient accumulation: two losses per step
                doc.loss(part).backward()
            expected.append(sum(float(p.detach()) for p in parts) / 2)
            opt.step()
            with torch.no_grad():  # a validation loss is not a training loss
                doc.loss(nn.functional.cross_entropy(model(x), y) * 100)
    assert [loss for _, loss in doc.stats.losses] == pytest.approx(expected, rel=1e-6)
    assert doc.loss(1.5) == 1.5  # after stop it is inert and returns its argument


# ------------------------------------------------------------------------- nan-loss
def test_nan_input_is_found_and_localised() -> None:
    model, opt = setup()
    x, _ = batch()
    bad = x.clone()
    bad[3, 2] = float("nan")
    with watch(model, opt) as doc:
        train(model, opt, 4, doc, inputs=lambda step: bad if step == 2 else x)
    found = checks_of(doc, "nan-loss")
    assert found and all(f.severity is Severity.ERROR for f in found)
    assert "step 3" in found[0].message
    assert any("inputs hold NaN" in f.message for f in found)


def test_nan_from_a_module_is_localised_to_it() -> None:
    torch.manual_seed(0)
    model = LogNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with watch(model, opt) as doc:
        train(model, opt, 1, doc)
    messages = " ".join(f.message for f in checks_of(doc, "nan-loss"))
    assert "replaying step 1" in messages
    assert "fc2" in messages  # the first module whose output is NaN: log ran in forward


def test_nan_after_the_last_step_is_reported_at_stop() -> None:
    model, opt = setup()
    x, y = batch()
    with watch(model, opt) as doc:
        train(model, opt, 2, doc)
        loss = doc.loss(nn.functional.cross_entropy(model(x) * float("inf"), y))
        assert not torch.isfinite(loss)  # the user's loop breaks out here
    messages = [f.message for f in checks_of(doc, "nan-loss")]
    assert messages and "step 3" in messages[0]
    assert any("loss computation made the NaN" in m for m in messages)


def test_healthy_loop_is_quiet() -> None:
    model, opt = setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchDoctorWarning)
        with watch(model, opt, update_every=1) as doc:
            train(model, opt, 12, doc)
    assert doc.findings == []
    report = doc.report()
    assert all(r.outcome is Outcome.PASSED for r in report.checks), report.checks


@pytest.mark.parametrize(("nan_step", "localised"), [(2, False), (5, True)])
def test_nan_found_at_the_read_without_the_per_step_check(nan_step: int,
                                                          localised: bool) -> None:
    # what happens on an accelerator: no per-step check, figures read every 5 steps
    model, opt = setup()
    x, _ = batch()
    bad = x.clone()
    bad[0, 0] = float("nan")
    with watch(model, opt, every=5, nan_every_step=False) as doc:
        train(model, opt, nan_step, doc, inputs=lambda s: bad if s == nan_step - 1 else x)
        assert bool(checks_of(doc, "nan-loss")) is (nan_step == 5)  # the read is at step 5
        train(model, opt, 5 - nan_step + 1, doc)
    first = checks_of(doc, "nan-loss")[0]
    assert f"at step {nan_step}" in first.message
    assert ("not localised" in first.message) is not localised
    assert any("inputs hold NaN" in f.message for f in doc.findings) is localised


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_between_reads_on_cuda() -> None:
    torch.manual_seed(0)
    model = TabularNet().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = (t.cuda() for t in batch())
    with watch(model, opt, every=1000) as doc:
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                opt.zero_grad()
                doc.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert len(doc.stats.grad_norms) == 5


# --------------------------------------------------------------------- gradient norms
def test_exploding_gradients() -> None:
    model, opt = setup(lr=0.0)
    with watch(model, opt) as doc:
        train(model, opt, 2, doc, scale=1e6)
    (finding,) = checks_of(doc, "gradient-norm")
    assert "exploding" in finding.message and finding.location == "group 0"
    fixed, opt = setup(lr=0.0)
    with watch(fixed, opt) as doc:
        train(fixed, opt, 2, doc)
    assert checks_of(doc, "gradient-norm") == []


def test_vanishing_gradients() -> None:
    t = Thresholds(vanishing_steps=3)
    model, opt = setup()
    with watch(model, opt, thresholds=t) as doc:
        train(model, opt, 4, doc, scale=1e-12)
    (finding,) = checks_of(doc, "gradient-norm")
    assert "vanishing" in finding.message
    model, opt = setup()
    with watch(model, opt, thresholds=t) as doc:
        train(model, opt, 4, doc)
    assert checks_of(doc, "gradient-norm") == []


# ----------------------------------------------------------------------- update ratio
@pytest.mark.parametrize(("lr", "word"), [(50.0, "above"), (1e-9, "below")])
def test_update_ratio_out_of_range(lr: float, word: str) -> None:
    model, opt = setup(lr=lr)
    with watch(model, opt, update_every=1) as doc:
        train(model, opt, 2, doc)
    found = checks_of(doc, "update-ratio")
    assert found and word in found[0].message
    model, opt = setup(lr=0.05)
    with watch(model, opt, update_every=1) as doc:
        train(model, opt, 2, doc)
    assert checks_of(doc, "update-ratio") == []


# ------------------------------------------------------------------------- loss trend
def _regression(lr: float) -> tuple[nn.Linear, torch.optim.SGD, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(32, 10) * 3
    y = x @ torch.randn(10, 1)
    model = nn.Linear(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, opt, lambda: ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize(("lr", "expected"), [(0.1, "diverging"), (0.0, "did not decrease")])
def test_loss_trend(lr: float, expected: str) -> None:
    t = Thresholds(loss_window=3, flat_steps=10)
    for rate, faulty in ((lr, True), (0.01, False)):
        model, opt, loss_fn = _regression(rate)
        with watch(model, opt, thresholds=t) as doc:
            for _ in range(12):
                opt.zero_grad()
                doc.loss(loss_fn()).backward()
                opt.step()
        found = checks_of(doc, "loss-trend")
        assert bool(found) is faulty, (rate, found)
        if faulty:
            assert expected in found[0].message


def test_loss_trend_is_skipped_without_a_loss() -> None:
    model, opt = setup()
    with watch(model, opt) as doc:
        train(model, opt, 2)
    result = doc.report().result("loss-trend")
    assert result is not None and result.outcome is Outcome.SKIPPED
    assert "doc.loss" in result.detail


# ------------------------------------------------------------- no-gradient / optimizer
def test_parameters_that_never_get_a_gradient() -> None:
    model, opt = setup(unused=True)
    with watch(model, opt) as doc:
        train(model, opt, 3, doc)
    (finding,) = checks_of(doc, "no-gradient")
    assert "unused.weight" in finding.message and finding.severity is Severity.WARNING
    model, opt = setup()
    with watch(model, opt) as doc:
        train(model, opt, 3, doc)
    assert checks_of(doc, "no-gradient") == []


def test_no_backward_at_all_is_an_error() -> None:
    model, opt = setup()
    x, _ = batch()
    with watch(model, opt) as doc:
        for _ in range(2):
            opt.zero_grad()
            model(x)
            opt.step()
    (finding,) = checks_of(doc, "no-gradient")
    assert finding.severity is Severity.ERROR and "backward" in finding.hint


def test_parameters_missing_from_the_optimizer() -> None:
    model, _ = setup()
    opt = torch.optim.SGD(model.fc2.parameters(), lr=0.1)
    with watch(model, opt) as doc:
        train(model, opt, 1, doc)
    (finding,) = checks_of(doc, "not-in-optimizer")
    assert "fc1.weight" in finding.message and "fc2" not in finding.message
    other, _ = setup()
    with watch(model, torch.optim.SGD(other.parameters(), lr=0.1)) as doc:
        pass
    assert checks_of(doc, "not-in-optimizer")[0].severity is Severity.ERROR
    model, opt = setup()
    with watch(model, opt) as doc:
        train(model, opt, 1, doc)
    assert checks_of(doc, "not-in-optimizer") == []


# ------------------------------------------------------------------ missing zero_grad
def test_missing_zero_grad() -> None:
    model, opt = setup()
    with watch(model, opt) as doc:
        train(model, opt, 3, doc, zero_grad=False)
    found = checks_of(doc, "missing-zero-grad")
    assert found and found[0].severity is Severity.ERROR


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_and_accumulation_are_quiet(set_to_none: bool) -> None:
    model, opt = setup()
    x, y = batch()
    with watch(model, opt) as doc:
        for _ in range(3):
            opt.zero_grad(set_to_none=set_to_none)
            for half in (x[:8], x[8:]):  # accumulate two micro-batches per step
                nn.functional.cross_entropy(model(half), y[:8]).backward()
            opt.step()
    assert checks_of(doc, "missing-zero-grad") == []


# ------------------------------------------------------------------------- eval mode
def test_training_in_eval_mode() -> None:
    model, opt = setup()
    model.eval()
    with watch(model, opt) as doc:
        train(model, opt, 2, doc)
    (finding,) = checks_of(doc, "eval-mode")
    assert finding.severity is Severity.ERROR and "model.train()" in finding.hint


def test_evaluating_in_train_mode() -> None:
    model, opt = setup()
    x, _ = batch()
    with watch(model, opt) as doc:
        train(model, opt, 1, doc)
        with torch.no_grad():
            model(x)  # forgot model.eval()
    (finding,) = checks_of(doc, "eval-mode")
    assert finding.severity is Severity.WARNING and "model.eval()" in finding.hint


def test_switching_modes_properly_is_quiet() -> None:
    model, opt = setup()
    x, _ = batch()
    with watch(model, opt) as doc:
        for _ in range(2):
            model.train()
            train(model, opt, 1, doc)
            model.eval()
            with torch.no_grad():
                model(x)
    assert checks_of(doc, "eval-mode") == []


# --------------------------------------------------------------------------- policies
def test_default_policy_warns_for_errors_only() -> None:
    model, opt = setup(unused=True)  # a warning finding: recorded, not warned
    model.eval()  # an error finding: warned
    with pytest.warns(TorchDoctorWarning, match=r"\[eval-mode\]") as caught:
        with watch(model, opt) as doc:
            train(model, opt, 2, doc)
    assert checks_of(doc, "no-gradient")
    assert not any("no-gradient" in str(w.message) for w in caught)
    assert caught[0].filename == __file__  # points at the user's loop


def test_record_policy_is_silent() -> None:
    model, opt = setup()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with watch(model, opt, policy="record") as doc:
            train(model, opt, 2, doc)
    assert checks_of(doc, "eval-mode")


def test_raise_policy_stops_before_the_bad_step() -> None:
    model, opt = setup()
    x, _ = batch()
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(NonFiniteError) as info:
        with watch(model, opt, policy={"nan-loss": "raise", "default": "record"}) as doc:
            train(model, opt, 2, doc)
            before = [p.detach().clone() for p in model.parameters()]
            train(model, opt, 1, doc, inputs=lambda _: bad)
    assert info.value.findings and info.value.findings[0].check == "nan-loss"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not doc.active and not opt._optimizer_step_pre_hooks


@pytest.mark.parametrize(("policy", "error"), [({"eval-mode": "raise"}, ModeError),
                                               ("raise", ModeError)])
def test_raise_policy_types(policy: object, error: type[Exception]) -> None:
    model, opt = setup()
    model.eval()
    with pytest.raises(error), watch(model, opt, policy=policy) as doc:  # type: ignore[arg-type]
        train(model, opt, 2, doc)


def test_missing_zero_grad_raises_gradient_error() -> None:
    model, opt = setup()
    with pytest.raises(GradientError), watch(model, opt, policy={"missing-zero-grad": "raise"}):
        train(model, opt, 3, zero_grad=False)


def test_policy_validation() -> None:
    model, opt = setup()
    with pytest.raises(ValueError, match="valid keys: nan-loss, loss-trend") as info:
        watch(model, opt, policy={"nan": "raise"})
    assert "'nan'" in str(info.value)
    with pytest.raises(ValueError, match="record, warn, raise"):
        watch(model, opt, policy={"nan-loss": "explode"})
    with pytest.raises(ValueError, match="every"):
        watch(model, opt, every=0)
    assert not model._forward_pre_hooks


# ------------------------------------------------------------------ hooks and state
def _hooks_left(model: nn.Module, opt: torch.optim.Optimizer) -> list[object]:
    left: list[object] = []
    for module in model.modules():
        left += [*module._forward_pre_hooks, *module._forward_hooks]
    left += [*opt._optimizer_step_pre_hooks, *opt._optimizer_step_post_hooks]
    left += [p for p in model.parameters() if p._backward_hooks is not None]
    return left


def test_hooks_are_removed_also_on_exceptions() -> None:
    model, opt = setup()
    with pytest.raises(KeyError), watch(model, opt) as doc:
        train(model, opt, 2, doc)
        raise KeyError("user code failed")
    assert _hooks_left(model, opt) == [] and not doc.active
    doc.stop()  # idempotent


def test_training_is_unchanged_by_watching() -> None:
    plain, plain_opt = setup(seed=3)
    watched, watched_opt = setup(seed=3)
    torch.manual_seed(7)
    expected = train(plain, plain_opt, 6)
    torch.manual_seed(7)
    with watch(watched, watched_opt, update_every=1) as doc:
        got = train(watched, watched_opt, 6, doc)
    assert got == expected
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    assert plain_opt.state_dict()["state"].keys() == watched_opt.state_dict()["state"].keys()


def test_no_memory_growth_and_inputs_released() -> None:
    model, opt = setup()

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, nn.Parameter))

    with watch(model, opt, update_every=3, history=5) as doc:
        train(model, opt, 10, doc)
        baseline = live_tensors()
        train(model, opt, 60, doc)
        assert live_tensors() <= baseline
        x, y = batch(seed=1)
        probe = weakref.ref(x)
        opt.zero_grad()
        doc.loss(nn.functional.cross_entropy(model(x), y)).backward()
        opt.step()
        del x
        gc.collect()
        assert probe() is None  # the watch dropped the inputs after the step
    assert len(doc.stats.grad_norms) == 5


def test_a_deep_copy_of_the_model_is_not_watched() -> None:
    import copy

    model, opt = setup()
    with watch(model, opt) as doc:
        clone = copy.deepcopy(model).eval()
        with torch.no_grad():
            clone(batch()[0])
        train(model, opt, 1, doc)
    assert doc.findings == []


# ------------------------------------------------------------------ explicit API/report
def test_explicit_api_without_step_hooks() -> None:
    model, opt = setup()
    x, y = batch()
    doc = Watch(model, opt, step_hooks=False, update_every=1)
    doc.start()
    assert not opt._optimizer_step_pre_hooks
    for _ in range(3):
        opt.zero_grad()
        doc.loss(nn.functional.cross_entropy(model(x), y)).backward()
        doc.before_step()
        opt.step()
        doc.after_step()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    doc.after_step()  # alone: the step is counted, the update ratio is not measured
    assert doc.check() == []
    doc.stop()
    assert doc.steps == 4 and len(doc.stats.update_ratios) == 3
    with pytest.raises(RuntimeError, match="only once"):
        doc.start()


def test_report_and_table() -> None:
    model, opt = setup(unused=True)
    with watch(model, opt) as doc:
        train(model, opt, 2, doc)
    report = doc.report()
    assert report.mode == "watch" and report.target == "TabularNet"
    assert [r.id for r in report.checks] == list(KINDS)
    assert report.result("no-gradient").outcome is Outcome.FAILED  # type: ignore[union-attr]
    text = doc.table()
    assert "no-gradient" in text and "unused.weight" in text
    assert '"mode": "watch"' in doc.table("json")


def test_lazy_public_names() -> None:
    assert torchdoctor.watch is watch and torchdoctor.Watch is Watch


@pytest.mark.slow
def test_example_runs() -> None:
    example = runpy.run_path(str(ROOT / "examples" / "watch_training_loop.py"))
    healthy = example["train"](6, buggy=False)
    buggy = example["train"](6, buggy=True)
    assert healthy.findings == []
    assert {f.check for f in buggy.findings} == {"nan-loss", "missing-zero-grad"}
