"""The overfit-one-batch check: a copy must fit one batch; when it cannot, the reason
(cut graph, frozen layers, parameters missing from the optimizer, tiny learning rate,
a final activation before CrossEntropyLoss)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.helpers import assert_ran_quiet, line_containing
from tests.models import image_mlp
from torchdoctor.check import SkipCheck
from torchdoctor.checks.overfit_one_batch import OverfitOneBatchCheck, examine
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate
from torchdoctor.engine.runner import diagnose, diagnose_model
from torchdoctor.findings import Finding, Outcome, Report, Severity
from torchdoctor.reference.trainer import FashionMNISTClassifier

CHECK = "overfit-one-batch"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"


def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]



# ---------------------------------------------------------------- example programs


def test_bug_program_detached_hidden_layer(example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("overfit_one_batch"))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "hidden.weight, hidden.bias get no gradient" in found[0].message
    assert "cannot fit one batch" in found[0].message
    line = line_containing(BUGS / "overfit_one_batch.py", ".detach()  # BUG")
    assert found[0].location.endswith(f"overfit_one_batch.py:{line}")
    assert ".detach()" in found[0].hint


# ---------------------------------------------------------------- model mode by hand


def _mlp(*tail: nn.Module) -> nn.Sequential:
    return image_mlp(128, *tail)


def _check(model: nn.Module,
           optimizer: Callable[[Iterable[Any]], torch.optim.Optimizer] | None = None,
           ) -> list[Finding]:
    return _mine(diagnose_model(model, optimizer_factory=optimizer, select=[CHECK],
                                name="Net"))


def test_reference_classifier_fits_fast_despite_dropout() -> None:
    from torchdoctor.reference.trainer import reference_setup

    options = CheckOptions()
    ctx = CheckContext("t", options, reference_setup(options), None,
                       [ModelCandidate.from_instance("Net", "test", FashionMNISTClassifier())])
    found = examine(ctx, ctx.models[0], budget=15.0)
    assert found is not None and found.fit is not None
    assert found.fit.converged and len(found.fit.losses) < 150
    assert OverfitOneBatchCheck().run(ctx) == []


def test_frozen_first_layer_and_final_relu() -> None:
    model = _mlp(nn.ReLU())
    model[1].requires_grad_(False)
    found = _check(model)
    assert {f.severity for f in found} == {Severity.ERROR}
    relu = next(f for f in found if "last operation is ReLU" in f.message)
    assert relu.location == "Net: 4 (ReLU)" and "remove the final activation" in relu.hint
    frozen = next(f for f in found if "frozen" in f.message)
    assert "1.weight, 1.bias" in frozen.message and "cannot fit one batch" in frozen.message


def test_final_relu_alone_is_found() -> None:
    found = _check(_mlp(nn.ReLU()))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "can never be negative" in found[0].message


def test_all_frozen_is_an_error() -> None:
    model = _mlp().requires_grad_(False)
    found = _check(model)
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "every parameter is frozen" in found[0].message


def test_tiny_learning_rate_is_named() -> None:
    found = _check(_mlp(), lambda params: torch.optim.Adam(params, lr=1e-7))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "learning rate 1e-07 is far too small" in found[0].message
    assert "1e-3" in found[0].hint


def test_parameters_missing_from_the_optimizer_are_named() -> None:
    found = _check(_mlp(), lambda params: torch.optim.SGD(list(params)[-2:], lr=1e-4))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "optimizer does not hold 1.weight, 1.bias" in found[0].message
    assert "model.parameters()" in found[0].hint


def test_large_initial_loss_is_reported() -> None:
    model = _mlp()
    with torch.no_grad():
        model[3].weight.mul_(200.0)
    found = _check(model)
    initial = [f for f in found if "initial loss" in f.message]
    assert initial and "expected ~2.3" in initial[0].message


def test_unfitted_model_with_no_known_cause_is_an_error() -> None:
    class Constant(nn.Module):  # ignores its input: nothing to learn from
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.zeros_like(x.flatten(1)))

    found = _check(Constant())
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "cannot fit one batch" in found[0].message


def test_slow_model_is_not_judged_past_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchdoctor.diagnoses import overfit

    monkeypatch.setattr(overfit, "BUDGET_SECONDS", 0.0)
    found = _check(_mlp())
    assert [f.severity for f in found] == [Severity.INFO]
    assert "did not finish" in found[0].message and "in 1 step on" in found[0].message


def test_user_model_and_threads_are_untouched() -> None:
    model = _mlp(nn.Dropout(0.1))
    model[1].requires_grad_(False)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    _check(model)
    assert torch.get_num_threads() == threads
    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_batch_that_does_not_fit_is_skipped() -> None:
    options = CheckOptions()
    from torchdoctor.reference.trainer import reference_setup

    ctx = CheckContext("t", options, reference_setup(options), None,
                       [ModelCandidate.from_instance("Net", "test", nn.Linear(3, 2))])
    with pytest.raises(SkipCheck):
        OverfitOneBatchCheck().run(ctx)


# ---------------------------------------------------------------- a file with hooks


HOOKED = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(20, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def torchdoctor_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 20, generator=generator), torch.randint(0, 4, (32,),
                                                                   generator=generator)


def torchdoctor_optimizer(params):
    OPTIMIZER
"""


@pytest.mark.parametrize(("optimizer", "expected"), [
    ("return torch.optim.SGD(list(params)[2:], lr=1e-4)", "optimizer does not hold body"),
    ("return torch.optim.Adam(params, lr=1e-3)", None),
])
def test_optimizer_hook_of_a_file(tmp_path: Path, optimizer: str,
                                  expected: str | None) -> None:
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent(HOOKED).replace("OPTIMIZER", optimizer),
                    encoding="utf-8")
    report = diagnose(f"{path}::Net", select=[CHECK])
    found = _mine(report)
    if expected is None:
        assert_ran_quiet(report, CHECK)
    else:
        assert [f.severity for f in found] == [Severity.ERROR]
        assert expected in found[0].message


def test_a_guessed_task_fitted_slowly_is_not_a_warning(tmp_path: Path) -> None:
    # a tiny model on an inferred regression task fits slowly at the reference Adam 1e-3:
    # that says little about the model (it used to be a warning recommending Adam 1e-3)
    path = tmp_path / "tiny.py"
    path.write_text("import torch\nnet = torch.nn.Linear(2, 2)\n")
    report = diagnose(f"{path}::net", select=["overfit-one-batch"])
    (result,) = report.checks
    assert result.outcome is Outcome.PASSED, result.findings
    assert [f.severity for f in result.findings] in ([], [Severity.INFO])
