"""Op-level tracing of the first training steps: the tensor operations user code runs
between a model's output and the loss and metrics, each with the user's file:line.

:class:`OpTracer` is a :class:`torch.overrides.TorchFunctionMode`. A function mode,
rather than a dispatch mode, because it sees the calls as the user wrote them
(``torch.log``, ``1 - p`` as ``Tensor.__rsub__``, ``F.softmax``, ``x.sum()``), above
autograd and before composite ops are decomposed into aten kernels; so a rule can say
"log of softmax at train.py:41" in the user's words, and "is this ``1 - sigmoid``" is a
question about two calls, not about a dozen kernels. Popped off the mode stack it costs
nothing, which is how tracing is confined to the first steps.

Each traced call that touches a tracked tensor, or that starts a chain the rules care
about (``softmax``, ``sum``, ``exp``...), gets an :class:`OpNode` (op name, input nodes,
shape, whether it derives from a model's output, the user's line); nodes are keyed by
tensor identity in a weak dictionary, so no tensor is kept alive. Calls made directly by
user code are handed to the rules (:mod:`torchdoctor.diagnoses.numerics`,
:mod:`torchdoctor.diagnoses.broadcasting`), which return :class:`OpProblem` records.
Calls made by torchdoctor itself are ignored.

Budget: tracing is live from the start until ``steps`` optimizer steps have run; it
comes back for the first ``eval_forwards`` forwards of the first evaluation phase (a
root forward under ``no_grad`` or in ``eval()`` mode), so metric code is seen too; then
it is off for good. ``max_forwards`` bounds a run without optimizer steps.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils.weak import WeakIdKeyDictionary

from torchdoctor.findings import Finding
from torchdoctor.scriptrun.callsite import is_user_file, location_of
from torchdoctor.scriptrun.observations import CodeLocation, OpNode, OpProblem
from torchdoctor.tensors import argument_tensors

#: torch's Python functions that only forward a call to the real op (or to a mode):
#: frames in them are looked through when finding who called the op
_WRAPPER_FILES = ("overrides.py", "functional.py", "_tensor.py", "_jit_internal.py")

#: Python spellings of one op -> its canonical name (the name the rules use)
_ALIASES = {
    "__rsub__": "rsub", "__sub__": "sub", "__isub__": "sub", "sub_": "sub", "subtract": "sub",
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "add_": "add",
    "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul", "mul_": "mul", "multiply": "mul",
    "__truediv__": "div", "__itruediv__": "div", "__div__": "div", "div_": "div",
    "divide": "div", "true_divide": "div", "__rtruediv__": "rdiv", "__rdiv__": "rdiv",
    "__pow__": "pow", "pow_": "pow", "float_power": "pow", "__rpow__": "rpow",
    "__eq__": "eq", "__ne__": "ne", "__lt__": "lt", "__le__": "le", "__gt__": "gt",
    "__ge__": "ge", "greater": "gt", "less": "lt", "greater_equal": "ge",
    "less_equal": "le", "not_equal": "ne", "__neg__": "neg", "negative": "neg",
    "log_": "log", "exp_": "exp", "sqrt_": "sqrt", "rsqrt_": "rsqrt", "sigmoid_": "sigmoid",
    "expit": "sigmoid", "special_expit": "sigmoid", "clip": "clamp", "clip_": "clamp",
    "clamp_": "clamp", "clamp_min": "clamp", "clamp_min_": "clamp", "clamp_max_": "clamp_max",
    "amax": "max", "linalg_vector_norm": "norm", "vector_norm": "norm", "std_mean": "std",
    "var_mean": "var", "special_logsumexp": "logsumexp", "special_log_softmax": "log_softmax",
    "special_softmax": "softmax",
}

#: ops whose result the rules look back at even when their input is not tracked
SOURCES = frozenset({
    "softmax", "sigmoid", "exp", "sum", "mean", "norm", "std", "var", "max", "sqrt",
    "log_softmax", "logsigmoid", "logsumexp", "clamp", "clamp_max",
})


def canonical_name(func: Any) -> str:
    """``sub`` for ``Tensor.__sub__``, ``torch.sub`` and ``Tensor.sub_``..."""
    name = getattr(func, "__name__", "") or ""
    return _ALIASES.get(name, name)


@lru_cache(maxsize=4096)
def _frame_kind(path: str) -> str:
    """``user``, ``doctor`` (torchdoctor itself), ``wrapper`` or ``library``."""
    if is_user_file(path):
        return "user"
    real = os.path.realpath(path)
    if real.startswith(_doctor_roots()):
        return "doctor"
    if os.sep + "torch" + os.sep in real and real.endswith(_WRAPPER_FILES):
        return "wrapper"
    return "library"


@lru_cache(maxsize=1)
def _doctor_roots() -> tuple[str, ...]:
    import torchdoctor
    import torchdoctor.checks

    return tuple(os.path.realpath(os.path.dirname(m.__file__ or "")) + os.sep
                 for m in (torchdoctor, torchdoctor.checks))


def _caller(frame: types.FrameType | None) -> tuple[str, CodeLocation | None]:
    """Who called the op: the first frame that is not one of torch's forwarding
    wrappers decides (user code, torchdoctor, or torch's own internals)."""
    while frame is not None:
        kind = _frame_kind(frame.f_code.co_filename)
        if kind == "user":
            return kind, location_of(frame)
        if kind != "wrapper":
            return kind, None
        frame = frame.f_back
    return "library", None


def _scalars(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[float, ...]:
    values = (*args[1:], *kwargs.values())
    return tuple(float(v) for v in values
                 if isinstance(v, (int, float)) and not isinstance(v, bool))


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    return []


@dataclass
class _Budget:
    steps: int
    eval_forwards: int
    max_forwards: int
    steps_seen: int = 0
    forwards_seen: int = 0
    eval_seen: int = 0
    #: "train" (live from the start), "await-eval" (off until evaluation), "eval", "done"
    phase: str = "train"
    traced_steps: int = field(default=0)


class OpTracer(TorchFunctionMode):
    """Trace tensor ops for the first steps; see the module docstring.

    ``models``: the models whose outputs are the prediction side (None: every root
    module with parameters that is called, as in a script run). ``optimizers``: whose
    steps count (None: every optimizer). Use as a context manager, or ``start()`` and
    ``stop()``; ``problems`` holds what the rules found (deduplicated by rule and line).
    """

    def __init__(self, *, models: list[nn.Module] | None = None,
                 optimizers: list[torch.optim.Optimizer] | None = None,
                 steps: int = 3, eval_forwards: int = 2, max_forwards: int = 12) -> None:
        super().__init__()
        from torchdoctor.diagnoses.broadcasting import broadcast_problem
        from torchdoctor.diagnoses.numerics import NumericsRules

        self._models = models
        self._optimizers = optimizers
        self.budget = _Budget(steps, eval_forwards, max_forwards)
        self.rules = NumericsRules()
        self._broadcast_problem = broadcast_problem
        self._nodes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._handles: list[Any] = []
        self._pushed = False
        self._live = False
        self._busy = False
        self._depth = 0
        self._found: dict[tuple[str, str], OpProblem] = {}
        #: user-code ops the rules looked at (how much the trace saw)
        self.ops_seen = 0

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> OpTracer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> OpTracer:
        """Install the hooks and start tracing."""
        self._install_hooks()
        self._go_live()
        return self

    def stop(self) -> None:
        """Stop tracing and remove every hook (idempotent)."""
        self.budget.phase = "done"
        self._go_dormant()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def problems(self) -> list[OpProblem]:
        """What the rules found, in the order first seen."""
        return self.rules.merge(list(self._found.values()))

    def mark_prediction(self, tensor: torch.Tensor) -> None:
        """Treat ``tensor`` as a model output (for validators that are handed one)."""
        self._nodes[tensor] = OpNode("model-output", (), tuple(tensor.shape), pred=True)

    def _install_hooks(self) -> None:
        from torch.nn.modules import module as module_mod
        from torch.optim import optimizer as optimizer_mod

        if self._models is None:
            self._handles += [
                module_mod.register_module_forward_pre_hook(self._global_pre),
                module_mod.register_module_forward_hook(self._global_post, always_call=True)]
        else:
            for model in self._models:
                self._handles += [model.register_forward_pre_hook(self._root_pre),
                                  model.register_forward_hook(self._root_post)]
        if self._optimizers is None:
            self._handles.append(optimizer_mod.register_optimizer_step_post_hook(self._step))
        else:
            self._handles += [o.register_step_post_hook(self._step) for o in self._optimizers]

    def _go_live(self) -> None:
        if not self._pushed:
            TorchFunctionMode.__enter__(self)  # pushes self on the mode stack
            self._pushed = True
        self._live = True

    def _go_dormant(self) -> None:
        """Leave the mode stack when on top of it; under another mode, only go quiet
        (popping it from below would pop the other one)."""
        self._live = False
        stack = _get_current_function_mode_stack()
        if self._pushed and stack and stack[-1] is self:
            TorchFunctionMode.__exit__(self, None, None, None)
            self._pushed = False

    # -- budget --------------------------------------------------------------------
    def _global_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._depth += 1
        if self._depth == 1 and _is_model(module):
            self._root_pre(module, args)

    def _global_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and _is_model(module):
            self._root_post(module, args, output)

    def _root_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        budget = self.budget
        budget.forwards_seen += 1
        evaluating = not torch.is_grad_enabled() or not module.training
        if budget.phase == "await-eval" and evaluating:
            budget.phase = "eval"
            self._go_live()
        if budget.phase == "eval":
            budget.eval_seen += 1
            if budget.eval_seen > budget.eval_forwards:
                self._finish()
        elif budget.phase == "train" and budget.forwards_seen > budget.max_forwards:
            self._finish()
        if self._live and self.rules.divisions.waiting:  # its inputs reach the model
            self.rules.divisions.reached(self._nodes.get(t) for t in argument_tensors(args, {}))

    def _root_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._live:
            return
        for tensor in _outputs(output):
            made_by = self._nodes.get(tensor)  # e.g. the model's final softmax
            self._nodes[tensor] = OpNode("model-output", (made_by,) if made_by else (),
                                         tuple(tensor.shape), pred=True)
            self.rules.divisions.reached([made_by])  # what its forward computed

    def _step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        budget = self.budget
        if budget.phase == "train":
            budget.steps_seen += 1
            budget.traced_steps = budget.steps_seen
            if budget.steps_seen >= budget.steps:
                budget.phase = "await-eval"
                self._go_dormant()
        elif budget.phase == "eval":
            self._finish()

    def _finish(self) -> None:
        self.budget.phase = "done"
        self._go_dormant()

    # -- the mode ------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._live and not self._busy:
            self._busy = True
            try:
                self._observe(func, args, kwargs, out, sys._getframe(1))
            finally:
                self._busy = False
        return out

    def _observe(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any,
                 frame: types.FrameType) -> None:
        outputs = _outputs(out)
        name = canonical_name(func)
        operands = argument_tensors(args, kwargs)
        nodes = tuple(self._nodes.get(t) for t in operands)
        if not outputs:
            if name == "__setitem__" and any(nodes):  # x[mask] = v, in place
                self.rules.divisions.masked(nodes)
            return
        if name not in SOURCES and not any(nodes):
            return
        kind, location = _caller(frame)
        if kind == "doctor":
            return
        node = OpNode(name, nodes, tuple(outputs[0].shape),
                      pred=any(n.pred for n in nodes if n is not None), user=kind == "user",
                      location=location, scalars=_scalars(args, kwargs))
        for tensor in outputs:
            self._nodes[tensor] = node
        self.rules.divisions.followed(node)
        if node.user:
            self.ops_seen += 1
            self._judge(node, operands, out)

    def _judge(self, node: OpNode, operands: list[torch.Tensor], out: Any) -> None:
        found = self.rules.observe(node, operands, out)
        problem = self._broadcast_problem(node, operands)
        if problem is not None:
            found.append(problem)
        for item in found:
            self._found.setdefault((item.rule, str(item.location)), item)


def _is_model(module: nn.Module) -> bool:
    """A root model: has parameters and is not a loss module."""
    if isinstance(module, nn.modules.loss._Loss):
        return False
    return next(module.parameters(), None) is not None


def trace_loss(loss_fn: Any, prediction: torch.Tensor | None, target: Any, *,
               model: nn.Module | None = None, inputs: Any = None) -> list[OpProblem]:
    """Trace one loss computation and return what the rules found.

    With ``model``, ``prediction`` is ignored: the model is run on ``inputs`` (a tuple
    is unpacked) inside the trace, so its own forward code is traced too, and its
    output is the prediction side. Otherwise ``prediction`` is the prediction side."""
    with OpTracer(models=[model] if model is not None else [], optimizers=[]) as tracer:
        if model is not None:
            prediction = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
        elif prediction is not None:
            tracer.mark_prediction(prediction)
        loss_fn(prediction, target)
    return tracer.problems


def problem_findings(problems: list[OpProblem]) -> list[Finding]:
    """The tracer's problems as findings (for ``watch()`` and the validators)."""
    from torchdoctor.findings import Severity

    return [Finding(p.check, Severity(p.severity), p.message, str(p.location or ""), p.hint)
            for p in problems]
