"""preserved_state puts global state back."""

from __future__ import annotations

import random

import torch

from torchdoctor.engine.state import preserved_state


def test_everything_is_restored_and_seed_makes_work_reproducible() -> None:
    torch_rng, python_rng = torch.get_rng_state(), random.getstate()
    draws = []
    for _ in range(2):
        with preserved_state(seed=3):
            draws.append(torch.rand(3))
            torch.set_grad_enabled(False)
            torch.set_default_dtype(torch.float64)
            torch.autograd.set_detect_anomaly(True)
            random.random()
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.get_rng_state(), torch_rng) and random.getstate() == python_rng
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32
    assert not torch.is_anomaly_enabled()


def test_leaked_global_hooks_are_removed_and_named() -> None:
    from torch.nn.modules import module

    def leaky_hook(*args: object) -> None:
        return None

    with preserved_state() as leaked:
        module.register_module_forward_hook(leaky_hook)
    assert not module._global_forward_hooks
    assert any("leaky_hook" in name for name in leaked)
