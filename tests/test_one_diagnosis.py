"""One bug, one id, one message: `torchdoctor check`, watch() and the assertion helpers
report missing zero_grad, randomness in eval mode and a model that cannot fit one batch
with the same id and the same words (issue 7)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchdoctor
from tests.helpers import findings_of
from tests.models import FunctionalDropout, functional_dropout_line, tabular_mlp
from torchdoctor.engine.runner import diagnose_model
from torchdoctor.findings import Finding
from torchdoctor.testing import (
    TorchDoctorAssertionError,
    assert_eval_deterministic,
    assert_no_grad_leak,
    assert_overfits_batch,
)


def _helper_findings(helper: Any, *args: Any, **kwargs: Any) -> list[Finding]:
    with pytest.raises(TorchDoctorAssertionError) as info:
        helper(*args, **kwargs)
    return info.value.findings


def _leaking_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> None:
    F.cross_entropy(model(batch[0]), batch[1]).backward()  # no zero_grad anywhere
    optimizer.step()


def test_missing_zero_grad_reads_the_same_in_watch_and_the_helper() -> None:
    torch.manual_seed(0)
    batch = torch.randn(16, 20), torch.randint(0, 4, (16,))
    model = tabular_mlp(hidden=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with torchdoctor.watch(model, optimizer, policy="record") as doc:
        for _ in range(3):
            _leaking_step(model, optimizer, batch)
    (watched,) = [f for f in doc.findings if f.check == "missing-zero-grad"]
    (helped,) = _helper_findings(assert_no_grad_leak, model, _leaking_step, batch)
    assert helped.check == watched.check and helped.hint == watched.hint
    assert watched.message.startswith(
        "optimizer.zero_grad() is never called between steps of SGD: gradients from step 1 ")
    # the helper knows the step() line too; the rest of the sentence is the same
    step_line = inspect.getsourcelines(_leaking_step)[1] + 2
    at = f" (tests/test_one_diagnosis.py:{step_line})"
    assert helped.message == watched.message.replace("from step 1 ", f"from step 1{at} ")


def test_eval_randomness_reads_the_same_in_the_check_and_the_helper() -> None:
    batch = torch.randn(8, 20), torch.randint(0, 4, (8,))
    report = diagnose_model(FunctionalDropout(), batch=batch, select=["eval-mode"], name="Net")
    (checked,) = findings_of(report, "eval-mode")
    (helped,) = _helper_findings(assert_eval_deterministic, FunctionalDropout(), batch[0])
    assert (helped.check, helped.location, helped.hint) == \
        (checked.check, checked.location, checked.hint)
    assert checked.location.endswith(functional_dropout_line())
    assert checked.message.startswith("Net gives different outputs for the same input")
    assert helped.message == checked.message.replace("Net ", "the model ", 1)


def _frozen_adam(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-9)  # far too small to fit anything


def test_a_model_that_cannot_fit_one_batch_has_one_id_and_one_budget() -> None:
    from torchdoctor.diagnoses import overfit
    from torchdoctor.testing import OVERFIT_STEPS

    torch.manual_seed(0)
    batch = torch.randn(16, 20), torch.randint(0, 4, (16,))
    model = tabular_mlp(hidden=8)
    report = diagnose_model(model, batch=batch, select=["overfit-one-batch"],
                            optimizer_factory=_frozen_adam)
    checked = findings_of(report, "overfit-one-batch")
    assert checked and "learning rate 1e-09 is far too small" in checked[0].message
    assert f"in {overfit.MAX_STEPS} steps" in checked[0].message
    helped = _helper_findings(assert_overfits_batch, model, batch,
                              optimizer_factory=_frozen_adam)
    assert helped[0].check == "overfit-one-batch"
    assert helped[0].message.startswith("the model cannot fit one batch: loss ")
    assert f"in {OVERFIT_STEPS} steps" in helped[0].message and OVERFIT_STEPS == 300
