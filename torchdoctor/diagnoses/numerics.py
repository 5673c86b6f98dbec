"""Numerically unsafe expressions: one home for the patterns, their words and their
safe replacements (check id ``numerics``).

A fast run sees a few dozen steps; ``log(softmax(x))`` or ``x / x.sum()`` train fine
until a logit saturates or a sample is all zeros, thousands of steps later. So the
expression itself is recognised, from the op trace of the first steps
(:mod:`torchdoctor.hooks.optrace`): each rule looks at one call made by user code and at
the calls that produced its inputs.

Severity: ``error`` where the observed batch already produced inf/NaN (or a 0 inside a
log, or a 0 under a square root that gradients flow through); ``warning`` otherwise:
the loss is finite now, and the message says what makes it fail later. A division by 0
is an error only once its result reaches a model or its loss (a division run while
preparing data whose result goes nowhere: a warning), see
:mod:`torchdoctor.diagnoses.numerics_divisions`.

Stays quiet: ``log_softmax``, ``logsigmoid``, ``logsumexp``, logs of clamped or
epsilon-shifted values, ``exp`` of a max-shifted or clamped value, divisions by an
epsilon-shifted or clamped denominator, divisions whose inf/NaN is masked away
afterwards (``r[torch.isinf(r)] = 0``, ``nan_to_num``), and anything not called by user
code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torchdoctor.diagnoses.numerics_divisions import DivisionLedger
from torchdoctor.scriptrun.observations import CodeLocation, OpProblem

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import OpNode

NUMERICS_CHECK = "numerics"

#: ops that keep the values as they are (casts, views, copies): looked through
TRANSPARENT = frozenset({
    "to", "float", "double", "half", "bfloat16", "contiguous", "clone", "detach", "cpu",
    "cuda", "type", "type_as", "view", "reshape", "squeeze", "unsqueeze", "flatten",
    "view_as", "reshape_as", "__getitem__", "select", "expand", "expand_as", "permute",
    "transpose", "t", "narrow", "model-output",
})
#: a log of these cannot see a 0 (clamped, shifted by an epsilon, or positive)
SAFE_LOG_ARGS = frozenset({"clamp", "add", "maximum", "softplus", "exp", "sigmoid_add"})
#: an exp of these cannot overflow (log-space values, max-shifted, clamped, bounded)
BOUNDED_EXP_ARGS = frozenset({
    "log_softmax", "logsigmoid", "clamp", "clamp_max", "log", "minimum", "tanh",
    "sigmoid", "softmax", "sin", "cos",
})
#: non-negative results: exp(-x) of these is at most 1
NON_NEGATIVE = frozenset({
    "abs", "relu", "softplus", "exp", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss",
    "huber_loss", "square",
})
#: denominators that are 0 for an all-zero (sum, norm) or constant (std, var) input
ZERO_PRONE = frozenset({"sum", "nansum", "norm", "std", "var"})
#: a sqrt of these cannot reach 0 (shifted by an epsilon, clamped, positive)
SAFE_SQRT_ARGS = frozenset({"add", "clamp", "softplus", "exp", "sigmoid", "maximum"})
LOGS = frozenset({"log", "log2", "log10"})

#: rule id -> (what the expression is, why it fails later, the safe replacement)
RULES: dict[str, tuple[str, str, str]] = {
    "log-softmax": (
        "log(softmax(x))",
        "softmax rounds a probability to exactly 0 once a logit is about 100 below the "
        "largest (float32; much sooner in float16), and log(0) = -inf turns the loss and "
        "every gradient into NaN",
        "torch.log_softmax(x, dim=1) (F.log_softmax); or give the raw logits to "
        "nn.CrossEntropyLoss"),
    "log-sigmoid": (
        "log(sigmoid(z))",
        "sigmoid(z) rounds to exactly 0 for z below about -100 (float32), and log(0) = "
        "-inf turns the loss and every gradient into NaN",
        "F.logsigmoid(z)"),
    "log-one-minus-sigmoid": (
        "log(1 - sigmoid(z))",
        "sigmoid(z) rounds to exactly 1 for z above about 17 (float32), so 1 - sigmoid(z) "
        "is 0 and the log is -inf; NaN gradients follow",
        "F.logsigmoid(-z) (it equals log(1 - sigmoid(z)), computed stably)"),
    "bce-by-hand": (
        "binary cross-entropy written by hand on probabilities (y * log(p) + (1 - y) * "
        "log(1 - p))",
        "once the model is confident p rounds to exactly 0 or 1 (a sigmoid saturates near "
        "|z| = 17 in float32) and one of the logs is -inf: the loss becomes inf/NaN",
        "return the logits (no sigmoid) and use nn.BCEWithLogitsLoss() "
        "(F.binary_cross_entropy_with_logits), which computes this stably"),
    "logsumexp-by-hand": (
        "log(exp(x).sum()) written by hand",
        "exp overflows to inf once an x exceeds about 88 (float32; 11 in float16), and "
        "the log of inf is inf",
        "torch.logsumexp(x, dim), which subtracts the max first"),
    "exp-unbounded": (
        "exp() of a value derived from the model's output that nothing bounds",
        "exp overflows to inf once the value exceeds about 88 (float32; 11 in float16), "
        "and a model's outputs grow as it trains",
        "work in log space (log_softmax, logsumexp), subtract the max first "
        "(x - x.max(dim, keepdim=True).values), or clamp the argument (x.clamp(max=20))"),
    "division-by-zero": (
        "division by a {what}",
        "it is 0 for an input that is all zeros (sum, norm) or constant (std, var), and "
        "x / 0 is inf or NaN; one such sample or batch is enough",
        "add an epsilon to the denominator (x / (d + 1e-8)) or clamp it "
        "(d.clamp_min(1e-8)); to normalise a vector, F.normalize(x, dim=...)"),
    "sqrt-at-zero": (
        "sqrt of a value that can reach 0 while gradients flow through it",
        "the forward value at 0 is a harmless 0, but the gradient 1 / (2 * sqrt(x)) is "
        "inf there and becomes NaN in backward (e.g. an RMSE loss that reaches a perfect "
        "fit, a std or a norm of identical values)",
        "torch.sqrt(x + 1e-8) (or x.clamp_min(1e-8).sqrt())"),
    "log-of-zero": (
        "log of a value derived from the model's output",
        "the argument is not clamped away from 0",
        "clamp the argument (x.clamp_min(1e-8)) or compute the quantity in log space"),
}

_LATER = "; the loss is finite on the batches seen, so a short run does not show it"
_NOW = {
    "log": "; the observed batch already has a 0 inside the log (-inf now)",
    "inf": "; the observed batch already overflowed (inf now)",
    "div": "; the observed batch already has a 0 denominator (inf/NaN now)",
    "div-unreached": ("; a 0 denominator is already there (inf/NaN now), though the result "
                      "was not seen reaching a model or its loss in the traced steps"),
    "sqrt": "; the observed batch already has a 0 under the square root (inf gradient now)",
}


def rule_text(rule: str, observed: str = "", **fields: str) -> tuple[str, str]:
    """``(message, hint)`` for one rule; ``observed`` (a key of the "already happened"
    phrases) makes it the wording of an error."""
    expression, why, hint = RULES[rule]
    tail = _NOW[observed] if observed else _LATER
    return f"{expression.format(**fields)}: {why}{tail}", hint


def through(node: OpNode | None) -> OpNode | None:
    """The node that really produced the values (casts, views and copies skipped)."""
    while node is not None and node.op in TRANSPARENT and node.inputs \
            and node.inputs[0] is not None:
        node = node.inputs[0]
    return node


class NumericsRules:
    """The rules, fed one user-code call at a time by the tracer. Keeps what is needed
    to pair ``log(p)`` with ``log(1 - p)`` (a hand-written BCE)."""

    def __init__(self) -> None:
        # probability node -> {"p" / "1-p": where its log was taken}
        self._logs: dict[OpNode, dict[str, CodeLocation | None]] = {}
        self._zeros: set[OpNode] = set()
        self._bce_lines: set[str] = set()
        #: what became of the flagged divisions (repaired? reached a model?)
        self.divisions = DivisionLedger(lambda node: through(node) or node)

    def observe(self, node: OpNode, operands: Sequence[Any], out: Any) -> list[OpProblem]:
        """Problems with this call (``operands``: its tensor arguments)."""
        op = node.op
        if not operands or not node.inputs:
            return []
        if op in LOGS:
            return self._log(node, operands[0])
        if op == "exp":
            return self._exp(node, out)
        if op in ("div", "rdiv"):
            return self._div(node, operands)
        if op in ("sqrt", "rsqrt") or (op == "pow" and _fractional(node.scalars)):
            return self._sqrt(node, operands[0])
        return []

    def merge(self, problems: list[OpProblem]) -> list[OpProblem]:
        """Drop the single-log findings a hand-written BCE finding already explains."""
        single = {"log-sigmoid", "log-one-minus-sigmoid", "log-of-zero"}
        by_hand = {str(p.location) for p in problems if p.rule == "logsumexp-by-hand"}
        kept = [p for p in problems
                if not (p.rule in single and str(p.location) in self._bce_lines)
                and not (p.rule == "exp-unbounded" and str(p.location) in by_hand)]
        return [q for q in map(self._division_outcome, kept) if q is not None]

    def _division_outcome(self, problem: OpProblem) -> OpProblem | None:
        """A division's finding as it stands now: none once its inf/NaN was masked away;
        an error only if a 0 denominator's result reached a model or its loss."""
        verdict = self.divisions.verdict(str(problem.location)) \
            if problem.rule == "division-by-zero" else None
        if verdict is None:
            return problem
        observed, what = verdict
        if observed == "repaired":
            return None
        message, hint = rule_text(problem.rule, observed, what=what)
        return OpProblem(problem.check, problem.rule, "error" if observed == "div" else
                         "warning", message, hint, problem.location)

    # -- rules ---------------------------------------------------------------------
    def _log(self, node: OpNode, argument: Any) -> list[OpProblem]:
        pred = node.inputs[0] is not None and node.inputs[0].pred
        src = through(node.inputs[0])
        if src is None or src.op in SAFE_LOG_ARGS:
            return []
        zero = bool((argument.detach() <= 0).any())
        if src.op == "softmax":
            return [_problem("log-softmax", node, "log" if zero else "")]
        if src.op == "sigmoid":
            return self._probability_log(src, "p", node, zero, "log-sigmoid")
        if src.op == "rsub" and 1.0 in src.scalars:
            inner = through(src.inputs[0]) if src.inputs else None
            if inner is not None and (inner.op == "sigmoid" or src.pred):
                return self._probability_log(inner, "1-p", node, zero,
                                             "log-one-minus-sigmoid")
        if src.op in ("sum", "mean") and src.inputs:
            summed = through(src.inputs[0])
            if summed is not None and summed.op == "exp" and not _stabilised(summed):
                return [_problem("logsumexp-by-hand", node, "inf" if _nonfinite(argument)
                                 else "")]
        if pred and _probabilities(argument):
            return self._probability_log(src, "p", node, zero, "log-of-zero")
        return [_problem("log-of-zero", node, "log")] if pred and zero else []

    def _probability_log(self, prob: OpNode, side: str, node: OpNode, zero: bool,
                         alone: str) -> list[OpProblem]:
        """A log of ``p`` or ``1 - p``: a BCE by hand once both are seen, else the
        single-log finding (for probabilities that are not a sigmoid's, only if a 0
        is already there)."""
        seen = self._logs.setdefault(prob, {})
        seen[side] = node.location
        if zero:
            self._zeros.add(prob)
        if len(seen) == 2:
            self._bce_lines.update(str(loc) for loc in seen.values())
            return [_problem("bce-by-hand", node, "log" if prob in self._zeros else "")]
        if alone == "log-of-zero" and not zero:
            return []
        return [_problem(alone, node, "log" if zero else "")]

    def _exp(self, node: OpNode, out: Any) -> list[OpProblem]:
        src = through(node.inputs[0])
        pred = node.inputs[0] is not None and node.inputs[0].pred
        if src is None or not pred or _bounded(src):
            return []
        return [_problem("exp-unbounded", node, "inf" if _nonfinite(out) else "")]

    def _div(self, node: OpNode, operands: Sequence[Any]) -> list[OpProblem]:
        index = 1 if node.op == "div" else 0
        if len(operands) <= index or len(node.inputs) <= index:
            return []
        denominator = operands[index]
        src = through(node.inputs[index])
        if src is None or not _zero_prone(src) or not denominator.is_floating_point():
            return []
        values = denominator.detach()
        if bool((values >= 1).all()) and bool((values == values.round()).all()):
            return []  # counts (a mask's sum): whole numbers, at least 1
        zero = bool((values == 0).any())
        what = {"sum": "sum", "nansum": "sum", "norm": "norm", "std": "standard deviation",
                "var": "variance"}.get(src.op, "square root of a sum, norm or variance")
        # its severity is settled in merge(): the inf/NaN may be masked away next
        self.divisions.flagged(node, zero=zero, what=what)
        return [_problem("division-by-zero", node, "div" if zero else "", what=what)]

    def _sqrt(self, node: OpNode, argument: Any) -> list[OpProblem]:
        import torch

        if not (argument.requires_grad and torch.is_grad_enabled()):
            return []
        src = through(node.inputs[0])
        if src is None or src.op in SAFE_SQRT_ARGS:
            return []
        zero = bool((argument.detach() == 0).any())
        return [_problem("sqrt-at-zero", node, "sqrt" if zero else "")]


def _problem(rule: str, node: OpNode, observed: str, **fields: str) -> OpProblem:
    message, hint = rule_text(rule, observed, **fields)
    return OpProblem(NUMERICS_CHECK, rule, "error" if observed else "warning", message,
                     hint, node.location)


def _fractional(scalars: tuple[float, ...]) -> bool:
    return bool(scalars) and 0.0 < scalars[0] < 1.0


def _stabilised(exp_node: OpNode) -> bool:
    """exp(x - x.max(...)): the max-shift that makes a hand-written log-sum-exp safe."""
    arg = through(exp_node.inputs[0]) if exp_node.inputs else None
    return arg is not None and _bounded(arg)


def _bounded(src: OpNode) -> bool:
    """Whether exp(src) cannot overflow."""
    if src.op in BOUNDED_EXP_ARGS:
        return True
    if src.op == "sub" and len(src.inputs) == 2:
        shift = through(src.inputs[1])
        return shift is not None and shift.op in ("max", "logsumexp")
    if src.op == "neg" and src.inputs:
        inner = through(src.inputs[0])
        return inner is not None and inner.op in NON_NEGATIVE
    return False


def _zero_prone(src: OpNode) -> bool:
    """A denominator that is 0 for some input: a sum, norm, std or variance, or the
    square root of one."""
    if src.op in ZERO_PRONE:
        if src.op in ("sum", "nansum") and src.inputs:
            summed = through(src.inputs[0])
            # a sum of exp/softmax/sigmoid values is positive (a hand-written softmax)
            return not (summed is not None and summed.op in ("exp", "softmax", "sigmoid"))
        return True
    if (src.op == "sqrt" or (src.op == "pow" and _fractional(src.scalars))) and src.inputs:
        inner = through(src.inputs[0])
        return inner is not None and _zero_prone(inner)
    return False


def _probabilities(tensor: Any) -> bool:
    values = tensor.detach()
    return bool(values.is_floating_point() and ((values >= 0) & (values <= 1)).all())


def _nonfinite(tensor: Any) -> bool:
    import torch

    return isinstance(tensor, torch.Tensor) and not bool(torch.isfinite(tensor).all())
