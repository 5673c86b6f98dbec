"""Script runs go to the program's end: caps per phase, the budget adapting to gradient
accumulation, the safety cap for loops no DataLoader bounds, the phases reported, and
hook functions defined below the loop honoured."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.helpers import assert_ran_quiet, findings_of, line_starting
from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runner import Diagnosis, diagnose
from torchdoctor.report import render, render_json
from torchdoctor.scriptrun import budget
from torchdoctor.scriptrun.observations import RunStatus
from torchdoctor.scriptrun.phases import summarize
from torchdoctor.scriptrun.script import run_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _program(tmp_path: Path, source: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path



# ------------------------------------------------------- the ten-epoch example program

@pytest.mark.slow
def test_ten_epoch_program_is_observed_through_every_phase(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = shutil.copy(EXAMPLES / "ten_epochs_phases.py", tmp_path)
    monkeypatch.chdir(tmp_path)  # were the overlay to fail, not into the repository
    with Diagnosis(str(program)) as diagnosis:
        report = diagnosis.report()
        output = diagnosis.script_result.output
        found_models = diagnosis.context().found_models
    # the reloaded checkpoint is a second instance of the same architecture: checked once
    assert len(diagnosis.script_result.models) == 2 and len(found_models) == 1
    assert "epoch 10:" in output and "test loss" in output and "predicted class" in output
    phases = {p["phase"]: p for p in report.phases}
    assert [p["phase"] for p in report.phases] == ["train", "validate", "checkpoint", "test",
                                                   "predict"]
    assert phases["train"]["passes"] == 10 and phases["validate"]["passes"] == 10
    # two full passes of each loader, then one batch per pass
    assert phases["train"]["batches"] == 2 * CheckOptions().limit_batches + 8
    assert phases["train"]["capped"] and phases["test"]["passes"] == 1
    assert phases["predict"]["calls"] == 1 and phases["predict"]["passes"] == 0
    assert phases["checkpoint"]["detail"] == "save x1, load x1, load_state_dict x1"
    assert not any(p["cut"] for p in report.phases)
    assert report.errors == [] and report.crashed == []
    for check in ("missing-zero-grad", "eval-mode", "params-not-updating", "risky-calls"):
        assert_ran_quiet(report, check)
    assert json.loads(render_json([report]))["phases"][0]["phase"] == "train"
    text = render([report], width=200)
    assert "phases: train (10 passes, 16 batches, capped), validate (10 passes" in text
    assert "checkpoint (save x1, load x1, load_state_dict x1), test (1 pass" in text
    # the checkpoint went to the scratch overlay, read back from there by the script
    assert [w.path for w in report.written] == ["ten_epochs_phases.pth"]
    assert not (tmp_path / "ten_epochs_phases.pth").exists()


HUNDRED_EPOCHS = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(640, 8), torch.randint(0, 3, (640,)))
    train_loader = DataLoader(data, batch_size=32, shuffle=True)
    model = nn.Linear(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(100):
        total = 0.0
        for batch, (x, y) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        mean = total / (batch + 1)
    print("finished", epoch, mean)
"""


def test_a_hundred_epochs_run_through_with_one_batch_per_later_pass(tmp_path: Path) -> None:
    result = run_script(_program(tmp_path, HUNDRED_EPOCHS), CheckOptions(max_steps=20))
    run = result.run
    assert run.status is RunStatus.COMPLETED and run.cut == ""
    assert "finished 99" in result.output
    assert [p.batches for p in run.passes[:3]] == [4, 4, 1] and len(run.passes) == 100
    assert all(p.capped for p in run.passes)
    # --max-steps applied, the rest skipped (the loop still ran through)
    assert len(run.applied_steps) == 20 and len(run.steps) == 8 + 98
    assert "step" not in vars(result.namespace["optimizer"])  # its own step is back


# ------------------------------------------------------------- gradient accumulation

ACCUMULATION = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(1024, 20), torch.randint(0, 5, (1024,)))
    loader = DataLoader(data, batch_size=16, shuffle=True)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    ACCUMULATE = 8
    for epoch in range(3):
        model.train()
        for i, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y) / ACCUMULATE
            loss.backward()
            if (i + 1) % ACCUMULATE == 0:
                optimizer.step()
                ZERO_GRAD
"""


def test_accumulation_passes_are_extended_to_two_applied_steps(tmp_path: Path) -> None:
    source = ACCUMULATION.replace("ZERO_GRAD", "optimizer.zero_grad()")
    run = run_script(_program(tmp_path, source), CheckOptions()).run
    assert run.status is RunStatus.COMPLETED
    first, second, third = run.passes
    assert (first.batches, second.batches) == (16, 16) and first.extended and second.extended
    assert third.batches == budget.LATER_PASS_BATCHES and not third.extended
    assert len(run.applied_steps) == 4 and not any(s.skipped for s in run.steps)


@pytest.mark.slow
def test_missing_zero_grad_in_an_accumulation_loop_is_found(tmp_path: Path) -> None:
    path = _program(tmp_path, ACCUMULATION.replace("ZERO_GRAD", "pass"))
    report = diagnose(str(path), select=["missing-zero-grad"])
    found = findings_of(report, "missing-zero-grad")
    assert len(found) == 1 and found[0].severity.value == "error"
    assert found[0].location.endswith(f"train.py:{line_starting(path, 'optimizer.step()')}")


@pytest.mark.slow
def test_a_correct_accumulation_loop_is_quiet(tmp_path: Path) -> None:
    source = ACCUMULATION.replace("ZERO_GRAD", "optimizer.zero_grad()")
    report = diagnose(str(_program(tmp_path, source)),
                      select=["missing-zero-grad", "params-not-updating"])
    assert_ran_quiet(report, "missing-zero-grad")
    assert_ran_quiet(report, "params-not-updating")


def test_a_loop_with_no_optimizer_pays_the_extension_once(tmp_path: Path) -> None:
    source = ACCUMULATION.replace("optimizer.step()", "pass").replace("ZERO_GRAD",
                                                                     "model.zero_grad()")
    run = run_script(_program(tmp_path, source), CheckOptions()).run
    assert [p.batches for p in run.passes] == [budget.FIRST_STEP_CEILING,
                                               CheckOptions().limit_batches, 1]


# ------------------------------------------------- loops no DataLoader bounds: the safety cap

ENDLESS = """
    import torch
    from torch import nn

    data = torch.randn(1000, 8)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def get_batch():
        index = torch.randint(0, 1000, (16,))
        return data[index], data[index].sum(dim=1, keepdim=True)

    iteration = 0
    while True:
        x, y = get_batch()
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        iteration += 1
        if iteration > 600000:
            break

    def torchdoctor_batch():
        return get_batch()
"""


def test_a_while_true_loop_is_cut_with_its_reason(tmp_path: Path) -> None:
    result = run_script(_program(tmp_path, ENDLESS), CheckOptions(max_steps=10))
    run = result.run
    assert run.status is RunStatus.STOPPED
    assert run.cut.startswith("safety cap: 20 backward passes with no DataLoader batch")
    assert len(run.backwards) == 21 and len(run.applied_steps) == 10
    assert [(p.name, p.cut) for p in summarize(run)] == [("train", run.cut)]


def test_a_hook_defined_below_a_cut_loop_is_honoured(tmp_path: Path) -> None:
    path = _program(tmp_path, ENDLESS)
    with Diagnosis(str(path), CheckOptions(max_steps=10)) as diagnosis:
        context = diagnosis.context()
        report = diagnosis.report()
    namespace = diagnosis.script_result.namespace
    assert callable(namespace["torchdoctor_batch"])
    assert context.setup is not None and context.setup.source["batch"] == "torchdoctor_batch()"
    line = line_starting(path, "def torchdoctor_batch")
    assert any(f"torchdoctor_batch() (line {line}) was defined after the run (the program"
               " ended before its def)" in n
               for n in report.notes)
    text = render([report], width=200)
    assert "cut: train: safety cap: 20 backward passes" in text


def test_a_hook_below_a_loop_that_runs_to_the_end_is_honoured(tmp_path: Path) -> None:
    source = textwrap.dedent(HUNDRED_EPOCHS) + textwrap.dedent("""
        def torchdoctor_batch():
            return data.tensors[0][:32], data.tensors[1][:32]
    """)
    with Diagnosis(str(_program(tmp_path, source)), CheckOptions()) as diagnosis:
        context = diagnosis.context()
    assert diagnosis.script_result.run.status is RunStatus.COMPLETED
    assert context.setup is not None and context.setup.source["batch"] == "torchdoctor_batch()"


def test_a_hook_below_a_crash_is_defined_and_a_failing_def_said(tmp_path: Path) -> None:
    source = """
        import torch
        model = torch.nn.Linear(4, 2)
        model(torch.randn(3, 5))

        def torchdoctor_loss():
            return torch.nn.MSELoss()

        def torchdoctor_batch(size=undefined_name):
            return torch.randn(size, 4), torch.randn(size, 2)
    """
    result = run_script(_program(tmp_path, source), CheckOptions())
    assert result.run.status is RunStatus.CRASHED
    assert callable(result.namespace["torchdoctor_loss"])
    assert "torchdoctor_batch" not in result.namespace
    line = line_starting(tmp_path / "train.py", "def torchdoctor_batch")
    assert any(f"torchdoctor_batch() (line {line}) could not be defined" in n
               and "NameError" in n for n in result.run.notes)


# ----------------------------------------------------------------- phase rules

EVALUATION_OVER_TENSORS = """
    import torch
    from torch import nn

    model = nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(64, 8)
    for epoch in range(2):
        model.train()
        for start in range(0, 32, 8):
            optimizer.zero_grad()
            model(data[start:start + 8]).pow(2).mean().backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(32, 64, 8):
                model(data[start:start + 8])
    with torch.no_grad():
        for start in range(32, 64, 8):
            model(data[start:start + 8])
        model(data[:1])
"""


BREAK_THEN_PREDICT = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    model = nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in DataLoader(data, batch_size=8):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        break
    with torch.no_grad():
        model(data.tensors[0][:1])
"""


def test_a_pass_left_with_break_is_over_and_not_capped(tmp_path: Path) -> None:
    run = run_script(_program(tmp_path, BREAK_THEN_PREDICT), CheckOptions()).run
    assert [(p.batches, p.capped, p.finished) for p in run.passes] == [(1, False, True)]
    assert [(p.name, p.forwards) for p in summarize(run)] == [("train", 1), ("predict", 1)]


def test_phases_outside_any_dataloader(tmp_path: Path) -> None:
    run = run_script(_program(tmp_path, EVALUATION_OVER_TENSORS), CheckOptions()).run
    assert [(p.name, p.forwards) for p in summarize(run)] == [
        ("train", 8), ("validate", 4), ("test", 8), ("predict", 1)]
    assert all(p.passes == 0 for p in summarize(run))
