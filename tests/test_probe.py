"""The forward probe: one traced forward per model candidate, shared by the checks."""

from __future__ import annotations

import torch
from torch import nn

from torchdoctor.checks.loss_function import LossFunctionCheck
from torchdoctor.checks.shape_mismatch import ShapeMismatchCheck
from torchdoctor.engine.context import CheckContext, CheckOptions, ModelCandidate
from torchdoctor.engine.runner import run_one_check, training_setup
from torchdoctor.findings import Outcome


class CountingNet(nn.Module):
    """Counts its forward passes; ends in a softmax (a loss-function finding) and takes
    images it does not flatten when ``flatten`` is False (a shape-mismatch finding)."""

    def __init__(self, flatten: bool = True) -> None:
        super().__init__()
        self.flatten = nn.Flatten() if flatten else nn.Identity()
        self.fc = nn.Linear(784, 10)
        self.dropout = nn.Dropout(0.5)  # the probe runs in training mode: RNG-dependent
        self.softmax = nn.Softmax(dim=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.softmax(self.dropout(self.fc(self.flatten(x))))


def _ctx(flatten: bool) -> tuple[CheckContext, list[CountingNet]]:
    built: list[CountingNet] = []

    def build() -> nn.Module:
        built.append(CountingNet(flatten))
        return built[-1]

    images = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    setup = training_setup(CheckOptions(), batch=lambda: (images, torch.arange(8) % 10))
    return CheckContext("t", CheckOptions(), setup, None,
                        [ModelCandidate("net", "test", build)]), built


def test_both_checks_read_one_forward_of_one_copy() -> None:
    ctx, built = _ctx(flatten=True)
    loss = run_one_check(LossFunctionCheck(), ctx)
    shape = run_one_check(ShapeMismatchCheck(), ctx)
    assert loss.outcome is Outcome.FAILED and "softmax" in loss.findings[0].message
    assert shape.outcome is Outcome.PASSED
    assert [net.calls for net in built] == [1]  # one copy, one forward, for both checks


def test_a_forward_that_raises_is_kept_for_every_check() -> None:
    ctx, built = _ctx(flatten=False)
    shape = run_one_check(ShapeMismatchCheck(), ctx)
    loss = run_one_check(LossFunctionCheck(), ctx)
    assert shape.outcome is Outcome.FAILED and "fc" in shape.findings[0].location
    # no output to judge: examined nothing, so skipped (never "passed"); shape-mismatch said why
    assert loss.outcome is Outcome.SKIPPED and "shape-mismatch" in loss.detail
    probe = ctx.forward_probe(ctx.models[0])
    assert isinstance(probe.error, RuntimeError) and probe.failed_at is not None
    assert probe.failed_at.module.qualname == "fc" and len(built) == 1


def test_the_probe_does_not_depend_on_the_callers_rng() -> None:
    first, _ = _ctx(flatten=True)
    torch.manual_seed(123)
    a = first.forward_probe(first.models[0]).output
    second, _ = _ctx(flatten=True)
    torch.rand(5)
    b = second.forward_probe(second.models[0]).output
    assert torch.equal(a, b)
    assert first.forward_probe(first.models[0]).last_leaf.type_name == "Softmax"
