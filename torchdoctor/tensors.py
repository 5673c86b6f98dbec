"""Small helpers over tensors and nested batches shared by checks and instruments."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from torchdoctor.scriptrun.observations import TensorSummary


def set_training(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """``module.train(mode)`` as nn.Module defines it, even when the user's class
    overrides ``train`` (or ``eval``) with a training routine of its own."""
    return torch.nn.Module.train(module, mode)


def deepcopy_module(module: torch.nn.Module) -> torch.nn.Module:
    """``copy.deepcopy`` that also works on a model holding non-leaf tensors as plain
    attributes (an activation cached during a forward): those are copied detached,
    where plain deepcopy raises "Only Tensors created explicitly by the user ..."."""
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(module, memo)


def stored_values(tensor: torch.Tensor) -> torch.Tensor:
    """The values ``tensor`` holds, as a strided tensor that zero and finiteness tests
    can run on: itself, the specified values of a sparse tensor (comparisons and
    ``isfinite`` have no sparse kernels: "aten::ne.Scalar ... SparseCPU"; a sparse
    gradient of ``nn.Embedding(sparse=True)``), or a dense copy of an mkldnn one."""
    if tensor.layout == torch.strided:
        return tensor
    if tensor.layout == torch.sparse_coo:  # coalesced: duplicate indices summed
        return tensor.coalesce().values()
    if tensor.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr,
                         torch.sparse_bsc):
        return tensor.values()
    return tensor.to_dense()


def copy_value(value: Any) -> Any:
    """``copy.deepcopy`` of a batch that also copies sparse CSR/CSC tensors (torch's
    deepcopy raises "Cannot access storage of SparseCsrTensorImpl"): non-strided
    tensors are cloned instead (detached, as deepcopy copies a leaf)."""
    memo = {id(t): t.detach().clone().requires_grad_(t.requires_grad)
            for t in iter_tensors(value) if t.layout != torch.strided}
    return copy.deepcopy(value, memo)


def forward(model: torch.nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple of inputs, else ``model(inputs)`` (the one way every
    part of torchdoctor calls a model on a batch's inputs)."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def to_device(value: Any, device: str | torch.device) -> Any:
    """Move a tensor, or the tensors inside lists/tuples/dicts, to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors inside a nested structure, depth first."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_tensors(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):  # a model's dataclass output (.logits)
            yield from iter_tensors(getattr(value, item.name))


def argument_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors among a call's arguments, one level into lists and tuples (not the
    deep walk of :func:`iter_tensors`: the op tracer and the GPU emulation call it on
    every torch call, where that walk would cost)."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a nested structure, or None."""
    return next(iter_tensors(value), None)


def _float_or_none(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


@torch.no_grad()
def summarize(tensor: torch.Tensor) -> TensorSummary:
    """Shape, dtype, device and statistics of ``tensor`` (without keeping it)."""
    shape = tuple(int(s) for s in tensor.shape)
    base: dict[str, Any] = {"shape": shape, "dtype": str(tensor.dtype),
                            "device": str(tensor.device)}
    if tensor.device.type == "meta" or tensor.layout != torch.strided or tensor.numel() == 0:
        return TensorSummary(**base)  # sparse/mkldnn: most statistics ops have no kernel
    if tensor.dtype == torch.bool or tensor.is_complex():
        return TensorSummary(**base)
    if not tensor.is_floating_point():
        return TensorSummary(**base, min=float(tensor.min()), max=float(tensor.max()))
    data = tensor.detach().float()
    finite_mask = torch.isfinite(data)
    finite = bool(finite_mask.all())
    values = data[finite_mask] if not finite else data
    if values.numel() == 0:
        return TensorSummary(**base, finite=False)
    probabilities, log_probabilities = _probability_shape(data) if finite else (False, False)
    return TensorSummary(
        **base,
        min=_float_or_none(values.min()),
        max=_float_or_none(values.max()),
        mean=_float_or_none(values.mean()),
        std=_float_or_none(values.std()) if values.numel() > 1 else 0.0,
        finite=finite,
        rows_sum_to_one=probabilities,
        log_probabilities=log_probabilities,
    )


def _probability_shape(data: torch.Tensor) -> tuple[bool, bool]:
    """Whether rows along dim 1 look like probabilities or log-probabilities.

    Dim 1 is the class dimension for every classification loss in torch.
    """
    if data.dim() < 2 or data.shape[1] < 2:
        return False, False
    sums = data.sum(dim=1)
    is_prob = bool((data >= 0).all() and (data <= 1).all()
                   and torch.allclose(sums, torch.ones_like(sums), atol=1e-3))
    is_log_prob = False
    if not is_prob and bool((data <= 0).all()):
        exp_sums = data.exp().sum(dim=1)
        is_log_prob = bool(torch.allclose(exp_sums, torch.ones_like(exp_sums), atol=1e-3))
    return is_prob, is_log_prob


def shape_only(tensor: torch.Tensor) -> TensorSummary:
    """Shape, dtype and device, without statistics (no kernels run)."""
    return TensorSummary(tuple(int(s) for s in tensor.shape), str(tensor.dtype),
                         str(tensor.device))


@contextmanager
def one_cpu_thread(device: str) -> Iterator[None]:
    """Run torch on one CPU thread (on ``device`` "cpu"), restoring the caller's setting
    after. A one-batch fit or a probe gains nothing from more, and on a machine whose
    cores are busy (a CI runner, a laptop running tests) OpenMP's waiting threads make it
    up to 10x slower; timings also stay comparable between the probe and the fit."""
    if not device.startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
