"""Tests of model.py written with torchdoctor's helpers and fixtures."""

from __future__ import annotations

import pytest
import torch
from model import TinyClassifier, train_step
from torch import nn

from torchdoctor.testing import (
    assert_eval_deterministic,
    assert_finite,
    assert_no_grad_leak,
    assert_output_shape,
    assert_overfits_batch,
    assert_params_update,
)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier()


def test_output_shape(model: nn.Module, reference_batch: tuple) -> None:
    images, _labels = reference_batch  # 64 FashionMNIST images (or a synthetic stand-in)
    assert_output_shape(model, images, (None, 10))
    assert model(images).shape == (64, 10)  # failures explain shapes, dtypes, NaN counts


def test_every_parameter_learns(model: nn.Module, reference_batch: tuple) -> None:
    assert_params_update(model, reference_batch)


def test_memorises_one_batch(model: nn.Module, reference_batch: tuple) -> None:
    images, labels = reference_batch
    assert_overfits_batch(model, (images[:32], labels[:32]),
                          optimizer_factory=lambda p: torch.optim.Adam(p, lr=3e-3))


def test_train_step_zeroes_gradients(model: nn.Module, reference_batch: tuple) -> None:
    assert_no_grad_leak(model, train_step, reference_batch)


def test_eval_mode_is_deterministic(model: nn.Module, reference_batch: tuple) -> None:
    assert_eval_deterministic(model, reference_batch[0])


def test_training_loop_is_healthy(model: nn.Module, reference_batch: tuple, watch) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, optimizer):  # error findings (NaN loss, missing zero_grad...) fail
        for _ in range(5):
            train_step(model, optimizer, reference_batch)
    assert_finite(model)


@pytest.mark.torchdoctor(select=["nan-loss", "eval-mode", "loss-function"])
def test_model_passes_torchdoctor_checks(model: nn.Module, doctor) -> None:
    doctor.assert_healthy(model)
