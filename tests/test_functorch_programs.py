"""Programs built on ``torch.func``: a model ensemble run with ``vmap`` over
``functional_call`` (its parameters stacked by ``stack_module_state``), with the base
module holding real tensors or living on the ``meta`` device. The run must go as with
plain python, and a meta-device model is left out of model mode with its reason."""

from __future__ import annotations

import pytest

from tests.helpers import findings_of
from torchdoctor.engine.runner import Diagnosis, diagnose
from torchdoctor.findings import ExitCode, Outcome

ENSEMBLE = """\
import copy, torch, torch.nn as nn
from torch.func import stack_module_state, functional_call
torch.manual_seed(0)
models = [nn.Linear(4, 2) for _ in range(3)]
params, buffers = stack_module_state(models)
base = copy.deepcopy(models[0]){meta}
def fmodel(p, b, x):
    return functional_call(base, (p, b), (x,))
x = torch.randn(3, 5, 4)
print("ensemble", tuple(torch.vmap(fmodel)(params, buffers, x).shape))
"""


@pytest.mark.slow
def test_vmap_over_functional_call_runs_as_with_python(write_program) -> None:
    path = write_program(ENSEMBLE.format(meta=""))
    with Diagnosis(str(path)) as diagnosis:
        report = diagnosis.report()
        script = diagnosis.script_result
    assert script is not None and script.run.error is None, script.run.error
    assert "ensemble (3, 5, 2)" in script.output
    assert findings_of(report, "target") == [] and report.errors == []


@pytest.mark.slow
@pytest.mark.parametrize("emulation", ["off", "auto"])
def test_a_model_on_the_meta_device_is_skipped_not_a_crash(write_program,
                                                           emulation: str) -> None:
    from torchdoctor.engine.context import CheckOptions

    path = write_program(ENSEMBLE.format(meta='.to("meta")'))
    report = diagnose(str(path), CheckOptions(gpu_emulation=emulation))
    overfit = report.result("overfit-one-batch")
    assert overfit is not None and overfit.outcome is Outcome.SKIPPED
    assert "base has its parameters on the meta device" in overfit.detail
    assert findings_of(report, "target") == [] and report.exit_code is ExitCode.OK


@pytest.mark.slow
def test_a_named_meta_model_is_skipped_in_model_mode(write_program) -> None:
    path = write_program('import torch.nn as nn\nbase = nn.Linear(4, 2).to("meta")\n')
    report = diagnose(f"{path}::base")
    assert {r.outcome for r in report.checks} == {Outcome.SKIPPED}
    assert "meta device" in report.result("nan-loss").detail  # type: ignore[union-attr]
    assert report.exit_code is ExitCode.OK


def test_the_functorch_test_sees_transforms_only_inside_them() -> None:
    import torch

    from torchdoctor.scriptrun.wrappers import under_functorch

    seen: list[bool] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(under_functorch())
        return x * 2

    torch.vmap(record)(torch.ones(3, 2))
    assert seen == [True] and not under_functorch()
