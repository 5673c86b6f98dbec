"""The eval-mode check: evaluation in training mode, training resumed in eval mode,
evaluation with gradients on (script mode), randomness left in eval() (model mode)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tests.helpers import assert_ran_quiet, line_containing
from tests.models import Noisy, PythonRandom
from torchdoctor.checks.eval_mode import EvalModeCheck
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate, TrainingSetup
from torchdoctor.engine.runner import diagnose, run_one_check
from torchdoctor.findings import Finding, Outcome, Report, Severity
from torchdoctor.reference.trainer import reference_loss, reference_optimizer
from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ForwardRecord,
    ObservedModel,
    RunStatus,
    ScriptRun,
)

CHECK = "eval-mode"
BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"

# A small training program on random data; the markers are replaced per test.
PROGRAM = """
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.fc2 = nn.Linear(32, 4)
        DROPOUT_MODULE

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = DROPOUT_CALL
        return self.fc2(x)


def torchdoctor_batch():
    return torch.randn(32, 20), torch.randint(0, 4, (32,))


def main():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(256, 20), torch.randint(0, 4, (256,)))
    loader = DataLoader(data, batch_size=32)
    model = Net()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        START_OF_EPOCH
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        model.eval()
        EVALUATION:
            for x, y in loader:
                model(x)


if __name__ == "__main__":
    main()
"""

HEALTHY = {
    "DROPOUT_MODULE": "self.drop = nn.Dropout(0.5)",
    "DROPOUT_CALL": "self.drop(x)",
    "START_OF_EPOCH": "model.train()",
    "EVALUATION": "with torch.no_grad()",
}


def _program(tmp_path: Path, **changes: str) -> Path:
    source = textwrap.dedent(PROGRAM)
    for marker, code in {**HEALTHY, **changes}.items():
        source = source.replace(marker, code)
    path = tmp_path / "train.py"
    path.write_text(source, encoding="utf-8")
    return path



def _mine(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.check == CHECK]


# ---------------------------------------------------------------- example programs


def test_bug_program_test_loop_without_eval_is_an_error(
        example_report: Callable[[str], Report]) -> None:
    found = _mine(example_report("eval_mode"))
    assert [f.severity for f in found] == [Severity.ERROR]
    line = line_containing(BUGS / "eval_mode.py", "model(images).argmax")
    assert found[0].location.endswith(f"eval_mode.py:{line}")
    assert "training mode" in found[0].message and "layers.3" in found[0].message
    assert "model.eval()" in found[0].hint


# ---------------------------------------------------------------- script mode, real runs


def test_training_resumed_in_eval_mode_is_found(tmp_path: Path) -> None:
    path = _program(tmp_path, START_OF_EPOCH="pass  # model.train() forgotten")
    found = _mine(diagnose(str(path), select=[CHECK]))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "resumed after `model.eval()`" in found[0].message
    assert found[0].location.endswith(f"train.py:{line_containing(path, 'loss_fn(model(x), y)')}")
    assert "model.train()" in found[0].hint


def test_evaluation_with_gradients_is_a_warning(tmp_path: Path) -> None:
    path = _program(tmp_path, EVALUATION="if True")
    found = _mine(diagnose(str(path), select=[CHECK]))
    assert [f.severity for f in found] == [Severity.WARNING]
    assert "torch.no_grad()" in found[0].hint
    line = line_containing(path, '                model(x)')
    assert found[0].location.endswith(f"train.py:{line}")


def test_model_without_dropout_gets_info_only(tmp_path: Path) -> None:
    path = _program(tmp_path, DROPOUT_MODULE="pass", DROPOUT_CALL="x",
                    START_OF_EPOCH="pass", EVALUATION="with torch.no_grad()")
    found = _mine(diagnose(str(path), select=[CHECK]))
    assert found and all(f.severity is Severity.INFO for f in found)
    assert "harmless for this model" in found[0].message


# ---------------------------------------------------------------- model mode


def test_functional_dropout_without_training_flag_is_pinned(tmp_path: Path) -> None:
    # the script itself calls eval()/train() correctly: only model mode can see this
    path = _program(tmp_path, DROPOUT_MODULE="pass", DROPOUT_CALL="F.dropout(x, 0.5)")
    found = _mine(diagnose(str(path), select=[CHECK]))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert found[0].location.endswith(f"train.py:{line_containing(path, 'F.dropout(x, 0.5)')}")
    assert "before fc2 (Linear" in found[0].message
    assert "training=self.training" in found[0].hint


def test_functional_dropout_with_training_flag_is_quiet(tmp_path: Path) -> None:
    path = _program(tmp_path, DROPOUT_MODULE="pass",
                    DROPOUT_CALL="F.dropout(x, 0.5, training=self.training)")
    assert_ran_quiet(diagnose(f"{path}::Net", select=[CHECK]), CHECK)


def _model_context(model: nn.Module) -> CheckContext:
    batch = (torch.randn(8, 20), torch.randint(0, 4, (8,)))
    setup = TrainingSetup(lambda: batch, reference_loss, reference_optimizer)
    return CheckContext("t", CheckOptions(), setup, None,
                        [ModelCandidate.from_instance("Net", "test", model)])


def test_randomness_inside_a_submodule_names_it() -> None:
    model = nn.Sequential(nn.Linear(20, 8), Noisy(), nn.Linear(8, 4))
    found = EvalModeCheck().run(_model_context(model))
    assert len(found) == 1
    assert found[0].location == "Net: 1 (Noisy)"
    assert "Noisy.forward" in found[0].message


def test_randomness_from_python_random_is_a_warning_naming_it() -> None:
    """pytorch/tutorials dynamic_net: its depth is random.randint's, by design."""
    import random

    random.seed(5)
    state = random.getstate()
    found = EvalModeCheck().run(_model_context(PythonRandom()))
    assert [(f.severity, f.location) for f in found] == [(Severity.WARNING, "Net: PythonRandom")]
    assert "draws random numbers (Python's `random`)" in found[0].message
    assert "<model>" not in found[0].message and "random depth" in found[0].hint
    assert random.getstate() == state  # the user's Python RNG is left as it was


_RANDOM_DEPTH = '''
import random, torch
class Poly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4) * 0.1)
    def forward(self, x):
        y = self.w[0] + self.w[1] * x
        for k in range(2, random.randint(2, 4)):  # random depth by design
            y = y + self.w[k] * x ** k
        return y{scale}
x = torch.linspace(-1, 1, 200); y = torch.sin(x)
model = Poly(); opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
for t in range(30):
    loss = torch.nn.functional.mse_loss(model(x), y, reduction="sum")
    opt.zero_grad(); loss.backward(); opt.step()
'''


def test_random_depth_program_is_not_an_error(tmp_path: Path) -> None:
    """pytorch/tutorials dynamic_net (the script never evaluates) was an eval-mode error
    located at the literal `model: <model> (Poly)`."""
    path = tmp_path / "dynamic_net.py"
    path.write_text(_RANDOM_DEPTH.format(scale=""), encoding="utf-8")
    report = diagnose(str(path), select=[CHECK])
    assert report.result(CHECK).outcome in (Outcome.PASSED, Outcome.FAILED)  # it ran
    assert [f for f in _mine(report) if f.severity is Severity.ERROR] == []
    scaled = tmp_path / "dynamic_scale.py"  # two calls always differ
    scaled.write_text(_RANDOM_DEPTH.format(scale=" * random.uniform(0.5, 1.5)"),
                      encoding="utf-8")
    found = _mine(diagnose(str(scaled), select=[CHECK]))
    assert [(f.severity, f.location) for f in found] == [(Severity.WARNING, "model: Poly")]
    assert "Python's `random`" in found[0].message


class _AttentionDropout(nn.Module):
    """Attention whose dropout_p is fixed: eval() cannot switch it off."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(20, 12)
        self.out = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(-1, 3, 1, 4).unbind(1)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        return self.out(attended.squeeze(1))


def test_attention_dropout_left_on_in_eval_is_an_error() -> None:
    found = EvalModeCheck().run(_model_context(_AttentionDropout()))
    assert [f.severity for f in found] == [Severity.ERROR]
    assert "training=self.training" in found[0].hint


def test_model_mode_leaves_model_and_rng_alone() -> None:
    model = nn.Sequential(nn.Linear(20, 8), nn.Dropout(0.5), nn.BatchNorm1d(8),
                          nn.Linear(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = _model_context(model)
    rng = torch.get_rng_state()
    assert EvalModeCheck().run(ctx) == []
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_model_that_does_not_take_the_batch_is_left_to_other_checks() -> None:
    assert EvalModeCheck().run(_model_context(nn.Linear(3, 4))) == []


# ---------------------------------------------------------------- script mode, by hand


def _forward(index: int, *, training: bool, grad: bool, backward: bool,
             loader_pass: int = 0, step: int = 0) -> ForwardRecord:
    return ForwardRecord(index=index, model=0, training=training, grad_enabled=grad,
                         step_count=step, location=CodeLocation("train.py", 10 + index),
                         backward_followed=backward, loader_pass=loader_pass)


def _script(forwards: list[ForwardRecord],
            status: RunStatus = RunStatus.COMPLETED) -> CheckContext:
    run = ScriptRun("train.py", status=status, forwards=forwards,
                    models=[ObservedModel(0, "Net", None, ["drop"])])
    return CheckContext("train.py", CheckOptions(), run=run)


def test_last_forward_of_a_crashed_run_is_not_an_evaluation() -> None:
    forwards = [_forward(0, training=True, grad=True, backward=True),
                _forward(1, training=True, grad=True, backward=False)]
    assert EvalModeCheck().run(_script(forwards, RunStatus.CRASHED)) == []
    found = EvalModeCheck().run(_script(forwards, RunStatus.COMPLETED))
    assert found == []  # same pass as a trained forward: not an evaluation pass either


def test_lone_forward_outside_loader_with_grad_is_not_an_evaluation() -> None:
    forwards = [_forward(0, training=True, grad=True, backward=False, loader_pass=-1),
                _forward(1, training=True, grad=True, backward=True)]
    assert EvalModeCheck().run(_script(forwards)) == []


def test_no_grad_inference_in_training_mode_is_found() -> None:
    forwards = [_forward(0, training=True, grad=True, backward=True),
                _forward(1, training=True, grad=False, backward=False, loader_pass=-1)]
    found = EvalModeCheck().run(_script(forwards))
    assert [(f.severity, f.location) for f in found] == [(Severity.ERROR, "train.py:11")]


def test_step_between_forwards_marks_training_without_backward_mark() -> None:
    # a loss built from a second output: the backward mark on the first never fires
    forwards = [_forward(0, training=True, grad=True, backward=False, step=0),
                _forward(1, training=True, grad=True, backward=False, step=1),
                _forward(2, training=False, grad=False, backward=False, step=2,
                         loader_pass=1)]
    assert EvalModeCheck().run(_script(forwards)) == []
    forwards[2].training = True  # the same run evaluating in training mode
    assert [f.location for f in EvalModeCheck().run(_script(forwards))] == ["train.py:12"]


def test_trained_in_eval_mode_from_the_start() -> None:
    forwards = [_forward(0, training=False, grad=True, backward=True)]
    found = EvalModeCheck().run(_script(forwards))
    assert len(found) == 1 and "trained in eval mode" in found[0].message


def test_nothing_to_examine_is_skipped() -> None:
    result = run_one_check(EvalModeCheck(), CheckContext("t", CheckOptions()))
    assert result.outcome is Outcome.SKIPPED
