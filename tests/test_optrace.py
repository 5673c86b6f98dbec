"""The op tracer and its rules (numerics, pred/target broadcasting), on small
hand-written expressions: each pattern found at its line with the right check id and
severity, the intentional ones quiet, nothing left installed afterwards."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from torchdoctor.hooks.optrace import OpTracer, trace_loss
from torchdoctor.scriptrun.observations import OpProblem


def _line(marker: str) -> int:
    """The line of this file that contains ``marker`` (once)."""
    lines = inspect.getsource(inspect.getmodule(_line)).splitlines()  # type: ignore[arg-type]
    hits = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(marker)]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def _rules(problems: list[OpProblem]) -> dict[str, OpProblem]:
    return {p.rule: p for p in problems}


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3), torch.randn(8, 4), torch.randint(0, 3, (8,))


def test_unsafe_numerics_found_at_their_lines() -> None:
    model, x, _ = _setup()
    with OpTracer() as tracer:
        out = model(x)
        torch.log(torch.softmax(out, 1))  # log-softmax
        torch.log(torch.exp(out).sum(1))  # lse-by-hand
        out / out.sum(1, keepdim=True)  # div-sum
        (x - x.mean(0)) / x.std(0)  # div-std
        torch.sqrt((out ** 2).mean())  # sqrt-zero
        torch.log(torch.sigmoid(out))  # log-sig
        torch.log(1 - torch.sigmoid(out))  # log-one-minus
        torch.exp(out)  # exp-unbounded
    found = _rules(tracer.problems)
    expected = {"log-softmax": "# log-softmax", "logsumexp-by-hand": "# lse-by-hand",
                "sqrt-at-zero": "# sqrt-zero", "log-sigmoid": "# log-sig",
                "log-one-minus-sigmoid": "# log-one-minus", "exp-unbounded": "# exp-unbounded"}
    for rule, marker in expected.items():
        assert found[rule].check == "numerics"
        assert found[rule].severity == "warning", rule
        assert found[rule].location is not None
        assert found[rule].location.line == _line(marker), rule
        assert found[rule].location.file.endswith("test_optrace.py")
    divisions = [p for p in tracer.problems if p.rule == "division-by-zero"]
    assert [p.location.line for p in divisions if p.location] == [
        _line("# div-sum"), _line("# div-std")]
    assert "standard deviation" in divisions[1].message and "1e-8" in divisions[1].hint
    assert "log_softmax" in found["log-softmax"].hint
    assert "logsumexp" in found["logsumexp-by-hand"].hint
    assert "finite on the batches seen" in found["log-softmax"].message


def test_hand_written_bce_is_one_finding_naming_bce_with_logits() -> None:
    model, x, _ = _setup()
    target = torch.randint(0, 2, (8, 3)).float()
    with OpTracer() as tracer:
        p = torch.sigmoid(model(x))
        -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()  # bce-line
    assert [(q.rule, q.location.line if q.location else 0) for q in tracer.problems] == [
        ("bce-by-hand", _line("# bce-line"))]
    assert "BCEWithLogitsLoss" in tracer.problems[0].hint


def test_zero_already_inside_the_log_is_an_error() -> None:
    model, x, _ = _setup()
    with torch.no_grad():
        model.weight.mul_(1000)  # saturate: softmax underflows to exact zeros
    with OpTracer() as tracer:
        torch.log(torch.softmax(model(x), 1))
    assert [(p.rule, p.severity) for p in tracer.problems] == [("log-softmax", "error")]
    assert "already has a 0 inside the log" in tracer.problems[0].message


def test_safe_forms_and_intentional_broadcasting_stay_quiet() -> None:
    model, x, y = _setup()
    channels = torch.randn(2, 3, 5, 5)
    mean, std = torch.rand(3, 1, 1), torch.rand(3, 1, 1) + 0.5
    with OpTracer() as tracer:
        out = model(x)
        F.log_softmax(out, 1)
        torch.logsumexp(out, 1)
        torch.log(torch.sigmoid(out).clamp(1e-7, 1 - 1e-7))
        torch.log(torch.softmax(out, 1) + 1e-8)
        F.logsigmoid(out)
        torch.exp(out - out.max(1, keepdim=True).values)
        torch.exp(F.log_softmax(out, 1))
        out / (out.sum(1, keepdim=True) + 1e-8)
        torch.sqrt((out ** 2).mean() + 1e-8)
        out + torch.zeros(3)  # bias add
        (channels - mean) / std  # per-channel normalisation
        scores = out.unsqueeze(1) * out.unsqueeze(2)
        mask = torch.ones(3, 3).triu(1).bool()
        torch.softmax(scores.masked_fill(mask, float("-inf")), -1)  # attention mask
        F.cross_entropy(out, y)
        (out.argmax(1) == y).float().mean()
        correct = (out.argmax(1) == y).sum()
        correct / torch.tensor(float(len(y)))
    assert tracer.problems == []


def test_pred_target_broadcast_shows_the_shape_story_and_fix() -> None:
    torch.manual_seed(0)
    model, x, y = nn.Linear(4, 1), torch.randn(64, 4), torch.randn(64)
    with OpTracer() as tracer:
        out = model(x)
        ((out - y) ** 2).mean()  # mse-line
        (out.round() == y).float().mean()  # acc-line
        ((out.squeeze(1) - y) ** 2).mean()
    assert [(p.check, p.severity, p.location.line if p.location else 0)
            for p in tracer.problems] == [
        ("shape-mismatch", "error", _line("# mse-line")),
        ("shape-mismatch", "error", _line("# acc-line"))]
    mse, accuracy = tracer.problems
    assert mse.message.startswith("(64, 1) - (64,) -> (64, 64)")
    assert "squeeze(1)" in mse.hint and "view_as" in mse.hint
    assert accuracy.message.startswith("(64, 1) == (64,) -> (64, 64)")
    assert "exceed 1" in accuracy.message


def test_tracing_stops_after_the_step_budget_and_leaves_nothing_behind() -> None:
    from torch.nn.modules import module as module_mod

    model, x, _ = _setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks = len(module_mod._global_forward_hooks)
    with OpTracer(steps=1) as tracer:
        model(x).sum().backward()
        optimizer.step()
        assert _get_current_function_mode_stack() == []  # popped after one step
        with torch.enable_grad():
            torch.log(torch.softmax(model(x), 1))  # training forward: not traced
        with torch.no_grad():
            torch.log(torch.softmax(model(x), 1))  # first evaluation forward: traced
    assert [p.location.line for p in tracer.problems if p.location] == [
        _line("# first evaluation forward: traced")]
    assert _get_current_function_mode_stack() == []
    assert len(module_mod._global_forward_hooks) == hooks


def test_trace_loss_with_a_model_traces_its_forward_too() -> None:
    class Probabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(x), 1)

    def loss_fn(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(torch.log(p), y)  # log of the model's softmax

    _, x, y = _setup()
    problems = trace_loss(loss_fn, None, y, model=Probabilities(), inputs=x)
    assert [(p.rule, p.location.line if p.location else 0) for p in problems] == [
        ("log-softmax", _line("# log of the model's softmax"))]


def _hand_written_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((prediction - target) ** 2).mean()  # hand-written mse


def _hand_written_bce(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


def test_validator_and_assertion_helper_expose_the_rules() -> None:
    import warnings

    import pytest

    from torchdoctor.errors import ShapeError
    from torchdoctor.testing import TorchDoctorAssertionError, assert_safe_loss
    from torchdoctor.validators import check_loss_expression

    prediction, target = torch.randn(16, 1), torch.randn(16)
    with pytest.raises(ShapeError, match=r"\(16, 1\) - \(16,\) -> \(16, 16\)"):
        check_loss_expression(_hand_written_mse, prediction, target)
    assert check_loss_expression(_hand_written_mse, prediction.squeeze(1), target) is None
    probabilities = torch.rand(16)
    with pytest.warns(UserWarning, match="BCEWithLogitsLoss"):
        check_loss_expression(_hand_written_bce, probabilities, target.gt(0).float())
    mse_line = f"test_optrace.py:{_line('# hand-written mse')}"
    with pytest.raises(TorchDoctorAssertionError, match=mse_line):
        assert_safe_loss(_hand_written_mse, prediction, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_safe_loss(_hand_written_mse, prediction.squeeze(1), target)


def test_watch_can_trace_its_first_steps() -> None:
    import torchdoctor

    torch.manual_seed(0)
    model, x, y = nn.Linear(4, 1), torch.randn(32, 4), torch.randn(32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with torchdoctor.watch(model, optimizer, policy="record", trace_steps=2) as doc:
        for _ in range(4):
            optimizer.zero_grad()
            loss = ((model(x) - y) ** 2).mean()  # watched broadcast
            loss.backward()
            optimizer.step()
    found = [f for f in doc.findings if f.check == "shape-mismatch"]
    assert [f.location.rsplit(":", 1)[-1] for f in found] == [str(_line("# watched broadcast"))]
    assert _get_current_function_mode_stack() == []


def _node_features() -> torch.Tensor:
    """Bag-of-words node features with an isolated node: row 0 sums to 0."""
    torch.manual_seed(0)
    features = (torch.rand(20, 6) < 0.5).float()
    features[0] = 0
    return features


def _divisions(tracer: OpTracer) -> list[tuple[str, int]]:
    return [(p.severity, p.location.line if p.location else 0)
            for p in tracer.problems if p.rule == "division-by-zero"]


def test_division_whose_inf_is_masked_away_afterwards_is_quiet() -> None:
    """The GCN row normalisation of pytorch/examples gcn and gat: r = 1 / rowsum, then
    r[torch.isinf(r)] = 0; and its other spellings."""
    features, model = _node_features(), nn.Linear(6, 3)
    with OpTracer() as tracer:
        r = 1 / features.sum(1)
        r[torch.isinf(r)] = 0
        q = 1 / features.sum(1)
        q[q == float("inf")] = 0.0
        w = 1 / features.sum(1)
        w = torch.where(torch.isinf(w), 0.0, w)
        d = features / features.sum(1, keepdim=True)
        d = d.masked_fill(~torch.isfinite(d), 0.0)
        n = torch.nan_to_num(features / features.sum(1, keepdim=True))
        model(features * (r + q + w)[:, None] + d + n)
    assert _divisions(tracer) == []
    assert bool(torch.isinf(1 / features.sum(1)).any())  # each division made an inf


def test_division_by_zero_is_an_error_only_once_its_result_reaches_a_model() -> None:
    features, model = _node_features(), nn.Linear(6, 3)
    with OpTracer() as tracer:
        unused = 1 / features.sum(1)  # data statistics, never given to the model
        scaled = features / features.sum(1, keepdim=True)  # fed to the model
        model(scaled)
    assert _divisions(tracer) == [("warning", _line("# data statistics, never given to the model")),
                                  ("error", _line("# fed to the model"))]
    assert "not seen reaching a model" in tracer.problems[0].message
    assert unused.isinf().any()


def test_division_by_zero_inside_the_forward_is_an_error() -> None:
    class RowNormalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x / x.sum(1, keepdim=True))  # forward division

    with OpTracer() as tracer:
        RowNormalised()(_node_features())
    assert _divisions(tracer) == [("error", _line("# forward division"))]
