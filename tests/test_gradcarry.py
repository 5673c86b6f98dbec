"""GradCarryDetector against hand-written loops with and without the bug."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdoctor.diagnoses.gradcarry import GradCarryDetector


def _loop(detector: GradCarryDetector, *, zero_grad: str, micro_batches: int = 1,
          steps: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    other = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    detector.watch(optimizer)
    for _ in range(steps):
        if zero_grad == "optimizer":
            optimizer.zero_grad()
        elif zero_grad == "model":
            model.zero_grad()
        elif zero_grad == "wrong-optimizer":
            other_optimizer.zero_grad()
        elif zero_grad == "manual":
            for p in model.parameters():
                p.grad = None
        for _ in range(micro_batches):
            model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()
        detector.note_step(optimizer)
    detector.close()
    return model


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("zero_grad", ["none", "wrong-optimizer"])
def test_carried_gradients_are_found(sync: bool, zero_grad: str) -> None:
    detector = GradCarryDetector(sync=sync, name_of=lambda p: f"p{tuple(p.shape)}")
    _loop(detector, zero_grad=zero_grad)
    assert detector.records, "the carried gradient was not found"
    first = detector.records[0]
    assert first.step_index == 1 and sorted(first.params) == ["p(2, 3)", "p(2,)"]


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("zero_grad", ["optimizer", "model", "manual"])
def test_cleared_gradients_and_accumulation_are_quiet(sync: bool, zero_grad: str) -> None:
    detector = GradCarryDetector(sync=sync)
    _loop(detector, zero_grad=zero_grad, micro_batches=4)
    assert detector.records == []


def test_hooks_are_removed_on_close() -> None:
    detector = GradCarryDetector()
    model = _loop(detector, zero_grad="optimizer")
    assert all(p._backward_hooks is None for p in model.parameters())


def test_zero_grad_calls_are_reported_with_the_carry() -> None:
    from torchdoctor.scriptrun.observations import CodeLocation

    detector = GradCarryDetector()
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    detector.watch(optimizer)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    detector.note_step(optimizer)
    detector.note_zero_grad(CodeLocation("train.py", 7))
    model(torch.ones(1, 2)).sum().backward()
    detector.close()
    assert detector.records[0].zero_grad_locations == [CodeLocation("train.py", 7)]
