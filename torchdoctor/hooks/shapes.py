"""ShapeTracer: every module call's input and output shapes, dtypes and devices, and the
module that was executing when a forward raised."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchdoctor.hooks.base import HookSet, call_inputs, module_info, shape_summaries
from torchdoctor.scriptrun.observations import ModuleCall, ModuleInfo, TensorSummary


@dataclass(frozen=True)
class ShapeRecord:
    """One module call: its position in execution order (calls are numbered when they
    start, so a parent comes before its children), nesting depth, and the summaries
    of the tensors it received and returned. ``raised`` marks a call that raised."""

    index: int
    qualname: str
    type_name: str
    depth: int
    inputs: tuple[TensorSummary, ...] = ()
    outputs: tuple[TensorSummary, ...] = ()
    detail: str = ""
    raised: bool = False

    @property
    def module(self) -> ModuleInfo:
        """The called module as a :class:`ModuleInfo`."""
        return ModuleInfo(self.qualname, self.type_name, self.detail)


@dataclass
class _Frame:
    module_id: int
    index: int
    call: ModuleCall


class ShapeTracer(HookSet):
    """Record every module call's input and output shapes, dtypes and devices.

    Tuple, list and dict outputs and keyword arguments are handled; non-tensor
    arguments are skipped. A module called twice appears twice. When a forward raises,
    :attr:`failed_at` names the innermost module that was executing (found with a
    pre-hook/hook stack; the hook is registered with ``always_call=True`` so it also
    runs while the exception propagates) and :attr:`failed_stack` all of them,
    outermost first. At most ``max_records`` calls are kept (the rest are counted in
    :attr:`dropped`) so the tracer can stay on for a whole training run.
    """

    def __init__(self, model: nn.Module, *, max_records: int = 10_000) -> None:
        super().__init__(model)
        self.max_records = max_records
        self._reset()

    def _reset(self) -> None:
        self.records: list[ShapeRecord] = []
        self.dropped = 0
        self.failed_at: ModuleCall | None = None
        self.failed_stack: list[ModuleCall] = []
        self.failure = ""
        self._stack: list[_Frame] = []
        self._next_index = 0
        self._failure_recorded = False

    def _install(self) -> None:
        for qualname, module in self._model.named_modules():
            info = module_info(qualname, module)
            self._keep(module.register_forward_pre_hook(self._pre_hook(info),
                                                        with_kwargs=True))
            self._keep(module.register_forward_hook(self._post_hook(), always_call=True))

    def _pre_hook(self, info: ModuleInfo) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs = shape_summaries(call_inputs(args, kwargs))
            index = self._next_index
            self._next_index += 1
            self._stack.append(_Frame(id(module), index, ModuleCall(info, inputs)))
            if len(self.records) < self.max_records:
                self.records.append(ShapeRecord(index, info.qualname, info.type_name,
                                                len(self._stack) - 1, inputs,
                                                detail=info.detail))
            else:
                self.dropped += 1
        return hook

    def _post_hook(self) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not self._stack or self._stack[-1].module_id != id(module):
                return  # an earlier pre-hook raised before ours ran
            raised = output is None and sys.exc_info()[1] is not None
            if raised:
                self._note_failure(sys.exc_info()[1])
            frame = self._stack.pop()
            self._finish_record(frame.index, () if raised else shape_summaries(output),
                                raised)
            if not self._stack:
                self._failure_recorded = False  # the next exception is a new failure
        return hook

    def _note_failure(self, exc: BaseException | None) -> None:
        # Only the innermost module (the first hook to see the exception) records it.
        if self._failure_recorded:
            return
        self._failure_recorded = True
        self.failed_stack = [frame.call for frame in self._stack]
        self.failed_at = self.failed_stack[-1]
        self.failure = f"{type(exc).__name__}: {exc}"

    def _finish_record(self, index: int, outputs: tuple[TensorSummary, ...],
                       raised: bool) -> None:
        # records are the first max_records calls, so a call's index is its position
        if index < len(self.records):
            self.records[index] = dataclasses.replace(self.records[index],
                                                      outputs=outputs, raised=raised)

    def table(self, fmt: str = "table") -> str:
        """The calls as a table (``table`` or ``markdown``), nested names indented
        with dots (tabulate strips leading spaces)."""
        from torchdoctor.report import table

        rows = [[r.index, ". " * r.depth + (r.qualname or "<model>"), r.type_name,
                 _shapes(r.inputs), "raised" if r.raised else _shapes(r.outputs),
                 _kinds(r.inputs + r.outputs)] for r in self.records]
        return table(rows, ["#", "module", "type", "input shapes", "output shapes",
                            "dtype / device"], fmt)


def _shapes(summaries: tuple[TensorSummary, ...]) -> str:
    return ", ".join(str(tuple(s.shape)) for s in summaries) or "-"


def _kinds(summaries: tuple[TensorSummary, ...]) -> str:
    kinds = dict.fromkeys(f"{s.dtype.replace('torch.', '')} {s.device}" for s in summaries)
    return ", ".join(kinds) or "-"
