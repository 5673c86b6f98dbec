"""The global patches of a script run cannot outlive it: wrappers that escaped the run
call straight through to the originals and keep nothing of the run alive, and a failure
half-way through installing leaves torch exactly as it was."""

from __future__ import annotations

import gc
import textwrap
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.optim import optimizer as optimizer_hooks
from torch.utils.data import DataLoader

from torchdoctor.engine.context import CheckOptions
from torchdoctor.scriptrun.instrument import Instrumentation
from torchdoctor.scriptrun.losses import FUNCTIONAL_LOSSES
from torchdoctor.scriptrun.observations import ScriptRun
from torchdoctor.scriptrun.patches import PatchSet
from torchdoctor.scriptrun.script import run_script

# The script keeps, beyond the run, every kind of wrapper the run installs.
ESCAPING = """
import torch
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, TensorDataset

saved_backward = torch.Tensor.backward
saved_iter = DataLoader.__iter__
saved_zero_grad = torch.optim.Optimizer.zero_grad
saved_module_zero_grad = nn.Module.zero_grad

model = nn.Linear(4, 3)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(torch.rand(40, 4), torch.randint(0, 3, (40,))),
                    batch_size=4)
for x, y in loader:
    optimizer.zero_grad()
    loss = cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
"""


def _attributes() -> dict[str, Any]:
    """Every attribute and global hook registry a run touches, by identity."""
    found: dict[str, Any] = {
        "DataLoader.__iter__": DataLoader.__iter__,
        "Tensor.backward": torch.Tensor.backward,
        "Optimizer.zero_grad": torch.optim.Optimizer.zero_grad,
        "Module.zero_grad": nn.Module.zero_grad,
    }
    found.update({f"F.{name}": getattr(nn.functional, name) for name in FUNCTIONAL_LOSSES})
    registries = {
        "forward_pre_hooks": module_hooks._global_forward_pre_hooks,
        "forward_hooks": module_hooks._global_forward_hooks,
        "forward_hooks_always_called": module_hooks._global_forward_hooks_always_called,
        "optimizer_pre_hooks": optimizer_hooks._global_optimizer_pre_hooks,
        "optimizer_post_hooks": optimizer_hooks._global_optimizer_post_hooks,
    }
    found.update({name: tuple(registry.items()) for name, registry in registries.items()})
    return found


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    changed = [name for name in before if before[name] is not after[name]
               and before[name] != after[name]]
    assert not changed, f"left patched: {changed}"


@pytest.mark.slow
def test_names_kept_by_the_script_call_the_originals_after_the_run(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(ESCAPING), encoding="utf-8")
    before = _attributes()
    result = run_script(script, CheckOptions(limit_batches=3))
    _assert_same(before, _attributes())
    run_ref = weakref.ref(result.run)
    assert result.run.losses and result.run.backwards  # the run did see them
    kept = {name: result.namespace[name] for name in (
        "cross_entropy", "saved_backward", "saved_iter", "saved_zero_grad",
        "saved_module_zero_grad")}
    loader: DataLoader = result.namespace["loader"]
    del result
    gc.collect()
    assert run_ref() is None, "a wrapper kept the run alive"

    prediction = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 1, 0])
    assert torch.equal(kept["cross_entropy"](prediction, target),
                       nn.functional.cross_entropy(prediction, target))
    with pytest.raises(TypeError):  # exactly the original's failure, no default target
        kept["cross_entropy"](prediction)
    kept["saved_backward"](kept["cross_entropy"](prediction, target))
    assert prediction.grad is not None
    assert len(list(kept["saved_iter"](loader))) == 10  # no batch limit any more
    model = nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    kept["saved_module_zero_grad"](model)
    assert model.weight.grad is None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kept["saved_zero_grad"](optimizer)


def test_wrapper_imported_during_a_run_records_nothing_after_it() -> None:
    run = ScriptRun(path="train.py")
    prediction, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with Instrumentation(CheckOptions(), run) as instrumentation:
        from torch.nn.functional import cross_entropy  # as a script would

        cross_entropy(prediction, target)
    assert [record.loss for record in run.losses] == ["cross_entropy"]
    assert cross_entropy is not nn.functional.cross_entropy  # the wrapper escaped
    instrumentation_ref = weakref.ref(instrumentation)
    del instrumentation
    gc.collect()
    assert instrumentation_ref() is None

    assert torch.equal(cross_entropy(prediction, target),
                       nn.functional.cross_entropy(prediction, target))
    assert [record.loss for record in run.losses] == ["cross_entropy"]


def _installers_failing_at(index: int) -> Callable[[Instrumentation],
                                                   Iterator[Callable[[PatchSet], None]]]:
    """Instrumentation._installers whose step ``index`` installs its part, then fails."""
    real = Instrumentation._installers

    def installers(self: Instrumentation) -> Iterator[Callable[[PatchSet], None]]:
        for position, step in enumerate(real(self)):
            if position != index:
                yield step
                continue

            def failing(patches: PatchSet, step: Callable[[PatchSet], None] = step) -> None:
                step(patches)
                raise RuntimeError("injected failure")

            yield failing

    return installers


_STEPS = len(list(Instrumentation(CheckOptions(), ScriptRun(path="x"))._installers()))


@pytest.mark.parametrize("index", range(_STEPS))
def test_failure_half_way_through_entry_leaves_torch_as_before(
        index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _attributes()
    monkeypatch.setattr(Instrumentation, "_installers", _installers_failing_at(index))
    with pytest.raises(RuntimeError, match="injected failure"):
        with Instrumentation(CheckOptions(), ScriptRun(path="train.py")):
            pytest.fail("entered despite the failure")
    _assert_same(before, _attributes())


def test_a_missing_torch_function_fails_entry_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch without one of the functional losses: entry fails with what was already
    patched (the first losses) undone."""
    before = _attributes()
    monkeypatch.setattr("torchdoctor.scriptrun.instrument.FUNCTIONAL_LOSSES",
                        ("cross_entropy", "mse_loss", "no_such_loss"))
    with pytest.raises(AttributeError, match="no_such_loss"):
        Instrumentation(CheckOptions(), ScriptRun(path="train.py")).__enter__()
    _assert_same(before, _attributes())


def test_undo_deletes_what_the_owner_only_inherited() -> None:
    class Base:
        def method(self) -> str:
            return "base"

    class Child(Base):
        pass

    patches = PatchSet()
    patches.patch(Child, "method", lambda self: "patched")
    assert Child().method() == "patched"
    patches.undo()
    assert "method" not in vars(Child) and Child().method() == "base"


def test_torch_compile_bound_during_a_run_keeps_no_run_alive() -> None:
    """A module first imported during the run may bind ``torch.compile`` (the bypass);
    afterwards that name must hold no reference to the run."""
    from torchdoctor.scriptrun.bypass import NOTE, CompileBypass
    from torchdoctor.scriptrun.observations import ScriptRun

    run = ScriptRun("train.py")
    run_ref = weakref.ref(run)
    original = torch.compile
    model = nn.Linear(2, 2)
    with CompileBypass(run):
        captured = torch.compile
        assert captured(model) is model and NOTE in run.notes
    assert torch.compile is original and captured is not original
    del run
    gc.collect()
    assert run_ref() is None, "the bypass kept the run alive"
