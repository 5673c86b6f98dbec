"""The numerics check and the traced broadcasts of shape-mismatch, on the example
programs: each buggy one found with the right id and file:line, each fixed one quiet
(the check ran and passed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import assert_ran_quiet, findings_of, line_containing
from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runner import diagnose
from torchdoctor.findings import Outcome, Report, Severity

BUGS = Path(__file__).resolve().parents[1] / "examples" / "bugs"

CHECK = "numerics"
EXAMPLE = "numerics"  # examples/bugs/numerics.py and its _fixed form



def test_bug_program_each_unsafe_expression_at_its_line(
        example_report: Callable[[str], Report]) -> None:
    found = findings_of(example_report("numerics"), CHECK)
    path = BUGS / "numerics.py"
    where = {f.location: f for f in found}
    expected = {  # line text -> (words, fix, severity)
        "x.std(1, keepdim=True)": ("standard deviation", "epsilon", Severity.WARNING),
        "torch.log(torch.softmax(": ("log(softmax(x))", "log_softmax", Severity.WARNING),
        "torch.log(torch.exp(logits)": ("log(exp(x).sum())", "logsumexp", Severity.WARNING),
        # a class absent from a batch of 16: the recall is NaN already
        "/ onehot.sum(0)": ("already has a 0 denominator", "clamp", Severity.ERROR),
    }
    assert len(found) == len(expected)
    for text, (words, fix, severity) in expected.items():
        finding = where[f"examples/bugs/numerics.py:{line_containing(path, text)}"]
        assert finding.severity is severity, text
        assert words in finding.message and fix in finding.hint, text


def test_fixed_program_is_quiet(example_report: Callable[[str], Report]) -> None:
    report = example_report("numerics_fixed")
    assert_ran_quiet(report, CHECK)
    assert report.errors == []


@pytest.mark.slow
def test_hand_written_bce_and_sqrt_at_zero(example_report: Callable[[str], Report]) -> None:
    path = BUGS / "numerics_binary.py"
    found = findings_of(example_report("numerics_binary"), CHECK)
    assert [(f.location, f.severity) for f in found] == [
        (f"examples/bugs/numerics_binary.py:{line_containing(path, 'bce = ')}", Severity.WARNING),
        (f"examples/bugs/numerics_binary.py:{line_containing(path, 'calibration = ')}",
         Severity.WARNING)]
    assert "BCEWithLogitsLoss" in found[0].hint and "1e-8" in found[1].hint
    fixed = example_report("numerics_binary_fixed")
    assert_ran_quiet(fixed, CHECK)
    assert fixed.errors == []


@pytest.mark.slow
def test_hand_written_loss_and_accuracy_broadcasts_are_shape_mismatch(
        example_report: Callable[[str], Report]) -> None:
    path = BUGS / "shape_mismatch_broadcast.py"
    found = findings_of(example_report("shape_mismatch_broadcast"), "shape-mismatch")
    assert [(f.location, f.severity) for f in found] == [
        (f"examples/bugs/shape_mismatch_broadcast.py:{line_containing(path, 'loss = ((')}",
         Severity.ERROR),
        (f"examples/bugs/shape_mismatch_broadcast.py:{line_containing(path, 'correct += ')}",
         Severity.ERROR)]
    assert found[0].message.startswith("(64, 1) - (64,) -> (64, 64)")
    assert "squeeze(1)" in found[0].hint
    fixed = example_report("shape_mismatch_broadcast_fixed")
    assert_ran_quiet(fixed, "shape-mismatch")
    assert fixed.errors == []


@pytest.mark.slow
def test_trace_steps_zero_turns_the_tracer_off() -> None:
    report = diagnose(str(BUGS / "shape_mismatch_broadcast.py"),
                      CheckOptions(trace_steps=0), select=["shape-mismatch", CHECK])
    assert findings_of(report, "shape-mismatch") == []
    numerics = report.result(CHECK)
    assert numerics is not None and numerics.outcome is Outcome.SKIPPED
    assert "--trace-steps 0" in numerics.detail


def test_model_mode_traces_the_users_loss_hook(write_program) -> None:  # type: ignore[no-untyped-def]
    path = write_program('''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def torchdoctor_loss():
    def loss(logits, targets):
        return nn.functional.nll_loss(torch.log(torch.softmax(logits, 1)), targets)
    return loss
''')
    report = diagnose(f"{path}::Net", select=[CHECK])
    found = findings_of(report, CHECK)
    assert [f.location.rsplit(":", 1)[-1] for f in found] == [
        str(line_containing(path, "torch.log(torch.softmax"))]


_GCN_NORMALISATION = '''
import torch, torch.nn as nn
torch.manual_seed(0)
features = (torch.rand(200, 30) < 0.1).float()
features[0] = 0  # a node with no words: its row sums to 0
s = 1 / torch.sum(features, dim=1)
{guard}
features = features * s[:, None]
y = torch.randint(0, 3, (200,))
model = nn.Linear(30, 3)
opt = torch.optim.Adam(model.parameters(), lr=0.01)
for _ in range(5):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(features), y)
    loss.backward()
    opt.step()
'''


@pytest.mark.slow
def test_gcn_normalisation_guarded_on_the_next_line_is_quiet(write_program) -> None:  # type: ignore[no-untyped-def]
    """pytorch/examples gcn and gat: r_inv = 1 / rowsum; r_inv[torch.isinf(r_inv)] = 0."""
    guarded = write_program(_GCN_NORMALISATION.format(guard="s[torch.isinf(s)] = 0"))
    assert_ran_quiet(diagnose(str(guarded), select=[CHECK]), CHECK)


@pytest.mark.slow
def test_unguarded_zero_row_that_reaches_the_loss_is_an_error(write_program) -> None:  # type: ignore[no-untyped-def]
    path = write_program(_GCN_NORMALISATION.format(guard=""))
    found = findings_of(diagnose(str(path), select=[CHECK]), CHECK)
    assert [(f.location.rsplit(":", 1)[-1], f.severity) for f in found] == [
        (str(line_containing(path, "s = 1 /")), Severity.ERROR)]
    assert "already has a 0 denominator" in found[0].message
