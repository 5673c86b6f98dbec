"""One home per bug class: every front end (checks, watch(), assertion helpers,
validators, hooks) says the same bug with the same id, test and words."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchdoctor.validators as validators
from torchdoctor.checks.device_mismatch import DeviceMismatchCheck
from torchdoctor.checks.shape_mismatch import ShapeMismatchCheck
from torchdoctor.diagnoses import devices, nonfinite, shapes
from torchdoctor.diagnoses.broadcasting import broadcast_message, broadcast_shape
from torchdoctor.engine.context import CheckContext, CheckOptions
from torchdoctor.errors import DeviceMismatchError, ShapeError
from torchdoctor.hooks import localize_nonfinite
from torchdoctor.scriptrun.observations import (
    CodeLocation,
    ErrorRecord,
    LossRecord,
    ScriptRun,
    TensorSummary,
)
from torchdoctor.testing import TorchDoctorAssertionError, assert_finite

# ---------------------------------------------------------------- non-finite values


def test_all_finite_walks_nested_values_and_confirms_an_overflowing_norm() -> None:
    huge = torch.full((1000,), 3e38)  # finite values whose norm overflows to inf
    assert not bool(torch.isfinite(torch.linalg.vector_norm(huge)))
    assert nonfinite.all_finite({"a": [huge, torch.arange(3)], "b": (torch.ones(2),)})
    assert nonfinite.all_finite([torch.empty(0), torch.ones(2, device="meta"), 3, None])
    bad = torch.tensor([1.0, float("inf")])
    assert not nonfinite.all_finite({"a": [torch.ones(2), bad]})
    assert nonfinite.first_nonfinite({"a": [torch.ones(2), bad]}) is bad


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_tensors_are_tested_on_their_stored_values() -> None:
    # isfinite and ne have no sparse kernels: a sparse gradient (nn.Embedding(sparse=True))
    # is judged by the values it stores
    dense = torch.tensor([[0.0, 2.0], [float("nan"), 0.0]])
    for layout in ("to_sparse", "to_sparse_csr"):
        bad, good = getattr(dense, layout)(), getattr(dense.nan_to_num(), layout)()
        assert not nonfinite.all_finite([good, bad])
        assert nonfinite.first_nonfinite([good, bad]) is bad
        assert nonfinite.all_finite(good) and nonfinite.first_nonfinite(good) is None


def test_assert_finite_uses_the_nan_loss_id() -> None:
    with pytest.raises(TorchDoctorAssertionError) as info:
        assert_finite(torch.tensor([float("nan")]))
    assert [f.check for f in info.value.findings] == [nonfinite.NONFINITE_CHECK_ID]


def test_a_loss_that_makes_the_nan_is_worded_once() -> None:
    model = nn.Linear(4, 3)
    report = localize_nonfinite(model, torch.randn(5, 4),
                                lambda out, y: torch.log(out - out).mean(), None)
    assert report.kind == "loss"
    assert report.findings == [nonfinite.loss_made_it_finding(report.loss)]
    assert "loss computation made the NaN/inf" in report.findings[0].message


# ---------------------------------------------------------------- shapes and broadcasting


def test_validators_and_the_check_share_explain_shape_error() -> None:
    assert validators.explain_shape_error is shapes.explain_shape_error
    # a loss-side error the check knew and the validators' copy did not
    message, hint = validators.explain_shape_error(
        "Expected target size [64, 10], got [64]", None, [])
    assert "extra dimension" in message and "squeeze" in hint
    assert validators.explain_shape_error("CUDA out of memory", None, []) == ("", "")


def test_broadcast_shape_is_one_function() -> None:
    assert validators.broadcast_shape is broadcast_shape
    assert broadcast_shape((8, 1), (8,)) == (8, 8) and broadcast_shape((3,), (4,)) is None


def test_a_broadcast_is_worded_the_same_by_the_check_and_the_validator() -> None:
    prediction, target = torch.randn(8, 1), torch.randn(8)
    with pytest.raises(ShapeError) as info:
        validators.check_loss_inputs(prediction, target, nn.MSELoss())
    said = info.value.findings[0]
    expected = broadcast_message("the loss", (8, 1), (8,))
    assert (said.check, said.message, said.hint) == ("shape-mismatch", *expected)

    summary = [TensorSummary((8, 1), "torch.float32", "cpu"),
               TensorSummary((8,), "torch.float32", "cpu")]
    where = CodeLocation("train.py", 3)
    run = ScriptRun("train.py", losses=[LossRecord(0, "mse_loss", *summary, 1.0, 0, where)])
    found = ShapeMismatchCheck().run(CheckContext("train.py", CheckOptions(), run=run))
    assert [(f.message, f.hint) for f in found] == [broadcast_message("mse_loss", (8, 1), (8,))]
    with pytest.warns(UserWarning, match="target size"):
        F.mse_loss(prediction, target)  # what torch says about it: a warning only


# ---------------------------------------------------------------- devices


def test_the_device_fix_is_worded_once() -> None:
    with pytest.raises(DeviceMismatchError) as info:
        validators.check_devices(nn.Linear(2, 2), torch.ones(2, device="meta"))
    assert info.value.findings[0].hint == devices.MOVE_HINT
    message = ("Expected all tensors to be on the same device, but found at least two "
               "devices, cuda:0 and cpu!")
    run = ScriptRun("train.py")
    explained = DeviceMismatchCheck().explain_crash(
        ErrorRecord("RuntimeError", message, CodeLocation("train.py", 4)), run)
    assert explained is not None and explained.hint == devices.MOVE_HINT
    assert explained.check == info.value.findings[0].check == devices.DEVICE_CHECK
