"""The runner: isolation of checks, and the guarantee that the user's objects and the
process's global state come out untouched."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor import Check, Outcome, TargetError, UsageError
from torchdoctor.engine.context import CheckContext, CheckOptions
from torchdoctor.engine.runner import diagnose, diagnose_model, run_one_check, select_checks

MODEL_FILE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, 64)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(self.flatten(x)))))

model = Net()
"""


class _Crashes(Check):
    id = "crashes"
    summary = "raises"

    def run(self, ctx: CheckContext) -> list:
        raise ValueError("a bug in a check")


class _LeavesHook(Check):
    id = "leaves-hook"
    summary = "forgets a global hook"

    def run(self, ctx: CheckContext) -> list:
        from torch.nn.modules.module import register_module_forward_hook

        register_module_forward_hook(lambda *args: None)
        return []


def _global_state() -> dict[str, object]:
    from torch.nn.modules import module

    return {
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "anomaly": torch.is_anomaly_enabled(),
        "hooks": (len(module._global_forward_hooks), len(module._global_forward_pre_hooks)),
    }


def _assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert torch.equal(before.pop("torch_rng"), after.pop("torch_rng"))  # type: ignore[arg-type]
    assert before == after


def _model_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], bool, list[bool]]:
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()])


def test_diagnose_leaves_the_named_model_and_global_state_untouched(tmp_path: Path) -> None:
    path = tmp_path / "usermodel.py"
    path.write_text(MODEL_FILE)
    before = _global_state()
    report = diagnose(f"{path}::model")
    _assert_same_state(before, _global_state())
    assert report.mode == "model"
    assert {r.id for r in report.checks} >= {"overfit-one-batch", "nan-loss"}


def test_diagnose_model_does_not_touch_model_or_optimizer() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(32, 10))
    model.eval()
    model[1].weight.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    params, training, requires_grad = _model_state(model)
    optimizer_state = {k: {n: t.clone() for n, t in v.items() if isinstance(t, torch.Tensor)}
                       for k, v in optimizer.state.items()}
    before = _global_state()
    report = diagnose_model(model, optimizer_factory=lambda p: torch.optim.Adam(p, lr=1e-3))
    _assert_same_state(before, _global_state())
    after_params, after_training, after_requires_grad = _model_state(model)
    assert all(torch.equal(params[k], after_params[k]) for k in params)
    assert (training, requires_grad) == (after_training, after_requires_grad)
    for key, state in optimizer.state.items():
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(optimizer_state[key][name], tensor)
    assert report.result("overfit-one-batch") is not None


def test_a_crashing_check_is_isolated() -> None:
    ctx = CheckContext("t", CheckOptions(), run=None, models=[])
    ctx_with_models = diagnose_context()
    result = run_one_check(_Crashes(), ctx_with_models)
    assert result.outcome is Outcome.CRASHED
    assert "a bug in a check" in result.detail
    skipped = run_one_check(_Crashes(), ctx)
    assert skipped.outcome is Outcome.SKIPPED


def test_a_check_leaving_a_global_hook_is_reported_and_the_hook_removed() -> None:
    from torch.nn.modules import module

    before = len(module._global_forward_hooks)
    result = run_one_check(_LeavesHook(), diagnose_context())
    assert result.outcome is Outcome.CRASHED
    assert "left global hooks installed" in result.detail
    assert len(module._global_forward_hooks) == before


def diagnose_context() -> CheckContext:
    from torchdoctor.engine.context import ModelCandidate
    from torchdoctor.reference.trainer import FashionMNISTClassifier, reference_setup

    options = CheckOptions()
    candidate = ModelCandidate.from_instance("m", "test", FashionMNISTClassifier())
    return CheckContext("t", options, reference_setup(options), None, [candidate])


def test_unknown_check_ids_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown check id 'nope'"):
        select_checks([_Crashes], ["nope"], None)
    assert select_checks([_Crashes, _LeavesHook], None, ["crashes"]) == [_LeavesHook]


def test_missing_name_in_file_is_a_target_error(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(MODEL_FILE)
    with pytest.raises(TargetError, match="has no name 'missing'"):
        diagnose(f"{path}::missing")


def test_module_colon_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pkg_for_target").mkdir()
    (tmp_path / "pkg_for_target" / "__init__.py").write_text("")
    (tmp_path / "pkg_for_target" / "models.py").write_text(MODEL_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = diagnose("pkg_for_target.models:Net", select=["shape-mismatch"])
    assert report.result("shape-mismatch").outcome is Outcome.PASSED  # type: ignore[union-attr]


_MLP_FILE = '''
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)
'''

_TABULAR_FILE = _MLP_FILE.replace("nn.Flatten(), nn.Linear(784, 32)", "nn.Linear(13, 32)")


def test_synthetic_reference_is_a_report_note_only_when_a_model_trained_on_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchdoctor.engine.runner import SYNTHETIC_REFERENCE_NOTE

    options = CheckOptions(data_root=str(tmp_path / "no-data"))
    (tmp_path / "mlp.py").write_text(_MLP_FILE)
    (tmp_path / "tabular.py").write_text(_TABULAR_FILE)
    mlp = diagnose(f"{tmp_path / 'mlp.py'}::Net", options, select=["shape-mismatch"])
    tabular = diagnose(f"{tmp_path / 'tabular.py'}::Net", options, select=["shape-mismatch"])
    assert mlp.data == "synthetic" and mlp.notes.count(SYNTHETIC_REFERENCE_NOTE) == 1
    assert "inferred" in tabular.data and SYNTHETIC_REFERENCE_NOTE not in tabular.notes
    assert "no usable FashionMNIST" not in capsys.readouterr().err  # no stray notice


def test_a_script_that_crashed_before_any_model_ran_is_not_said_to_train_tensors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pytorch/examples fast_neural_style offline: the model is built, then a pretrained
    # download fails before any forward
    path = tmp_path / "train.py"
    path.write_text("import torch\n\ndef main():\n    net = torch.nn.Linear(2, 2)\n"
                    "    raise OSError('cannot download the pretrained weights')\n\nmain()\n")
    monkeypatch.chdir(tmp_path)
    report = diagnose(str(path), select=["overfit-one-batch"])
    (result,) = report.checks
    assert result.outcome is Outcome.SKIPPED
    assert result.detail.startswith("the script crashed before any model ran")
