"""Learning rates that cannot work, judged from the update sizes of the script's own
optimizer steps (``||Δw|| / ||w||`` per param group, measured by
:mod:`torchdoctor.scriptrun.updates`): one home for the thresholds, id, words and fixes.

Thresholds, from measurements of the first five steps of healthy programs (tests/corpus,
pytorch/examples, nanoGPT) and of the same loops with bad learning rates:

* healthy programs move a param group by 3.7e-4 (nanoGPT's LayerNorm group, first warmup
  steps) to 0.39 (Adam lr=0.03 in the forward-forward example) of its size per step;
  Adam lr=1e-5 (fine-tuning) gives about 1e-4, SGD lr=1e-4 about 1.4e-5;
* Adam lr=1e-9 gives 3e-9 to 1.1e-8, SGD lr=1e-9 about 1e-11: **negligible** below
  :data:`NEGLIGIBLE` (1e-6: 10,000 steps move the weights by less than 1% of their
  size, whatever their directions). An error only below :data:`NEGLIGIBLE_ERROR` (1e-7:
  100,000 steps cannot move them by 1%) for an adaptive optimizer (Adam and its kin),
  whose step is set by the learning rate, not by the gradient: with SGD a tiny step may
  come from tiny gradients instead, so SGD gets a warning;
* SGD lr=10 moves an MLP's weights by 1.4 to 4.9 times their size per step, Adam lr=1
  by 14 to 45 times at its first step, AdamW lr=0.1 by 1.4 (a 64-wide layer) to 4.5
  (784-wide): **huge** from :data:`HUGE` (2.0, a step twice as large as the weights
  themselves) at any measured step. Not 1.0: pytorch/examples' forward-forward MNIST
  (Adam lr=0.03 on Linear(784, 500)) trains well and moves its first layer by 1.2 at its
  first step (Adam's first step is lr per weight, about lr * sqrt(3 * fan_in) of a
  default-initialised layer). A warning: the result is not certain to be wrong. Groups
  of fewer than :data:`HUGE_MIN_VALUES` weights are left out (a raw regression's few
  weights rightly move far from a tiny init: 5.1 times at the first step in the
  corpus), as are groups that start all zero (no size to compare with) and LBFGS (one
  ``step()`` runs many iterations).

Not judged: a group with lr=0 (frozen on purpose), and a learning rate that rises over
the measured steps (a warmup, by a scheduler or by hand: the peak is not known yet). A
scheduler's lowered start (``initial_lr`` above the current lr) is scaled back to its
base lr before judging. No torch at module level.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from torchdoctor.findings import Finding, Severity

if TYPE_CHECKING:
    from torchdoctor.scriptrun.observations import UpdateRecord

FINDING_ID = "learning-rate"
SUMMARY = ("updates of the script's own optimizer that are negligible or as large as the "
           "weights (learning rate far too small or too large)")

#: at most this much of the weights' size per step: negligible (warning)
NEGLIGIBLE = 1e-6
#: at most this much per step with an adaptive optimizer: it cannot train (error)
NEGLIGIBLE_ERROR = 1e-7
#: at least this much of the weights' size in one step: huge (warning); see above for
#: why not 1.0 (a healthy public program's first Adam step measures 1.2)
HUGE = 2.0
#: a group needs this many weights to be judged huge (not a raw regression's few)
HUGE_MIN_VALUES = 1000
#: optimizers whose step size is set by the learning rate (normalised by the gradient)
ADAPTIVE = frozenset({"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad",
                      "Adafactor", "SparseAdam"})
#: optimizers whose ``step()`` is not one update
NOT_ONE_UPDATE = frozenset({"LBFGS"})

SMALL_HINT = ("raise the learning rate (typically 1e-4 to 3e-3 for Adam/AdamW, 1e-3 to 0.1 "
              "for SGD with momentum, 1.0 for Adadelta); check for a unit slip (1e-9 "
              "written for 1e-3) or a scheduler factor that scales it down")
#: for optimizers whose step is not set by the lr alone; formatted with the optimizer's name
GRADIENT_NOTE = (" (with {optimizer} the step also scales with the gradient: vanishing "
                 "gradients give the same symptom)")
LARGE_HINT = ("lower the learning rate (typically 1e-4 to 3e-3 for Adam/AdamW, 1e-3 to 0.1 "
              "for SGD), or warm it up from a small value")


def findings(records: list[UpdateRecord], *, huge: bool = True) -> list[Finding]:
    """One finding per param group whose updates are negligible or (when ``huge``)
    huge."""
    found = [negligible_finding(r) or (huge_finding(r) if huge else None) for r in records]
    return [f for f in found if f is not None]


def _group(record: UpdateRecord) -> str:
    """``Adam param group 0 (fc1.weight, ...)``."""
    first = f" ({record.first_param}, ...)" if record.first_param else ""
    return f"{record.optimizer_type} param group {record.group}{first}"


def _judged(record: UpdateRecord) -> list[tuple[float, float]]:
    """The (ratio, lr) of the measured steps, or [] when the group is not judged."""
    pairs = [(r, lr) for r, lr in zip(record.ratios, record.lrs)
             if not math.isnan(r) and math.isfinite(lr)]
    lrs = [lr for _, lr in pairs]
    if not pairs or record.optimizer_type in NOT_ONE_UPDATE or any(lr == 0 for lr in lrs):
        return []  # lr=0: frozen on purpose
    if any(later > earlier for earlier, later in itertools.pairwise(lrs)):
        return []  # a warmup: the lr it rises to is not known yet
    return pairs


def negligible_finding(record: UpdateRecord) -> Finding | None:
    """The finding for a group that the steps barely move (None if they do move it)."""
    pairs = _judged(record)
    if not pairs:
        return None
    base = record.initial_lr
    # a scheduler that starts below its base lr: judge the base lr it will reach
    largest = max(r * (base / lr if base and base > lr > 0 else 1.0) for r, lr in pairs)
    if largest >= NEGLIGIBLE:
        return None
    adaptive = record.optimizer_type in ADAPTIVE
    certain = adaptive and largest < NEGLIGIBLE_ERROR
    steps = "100,000" if certain else "10,000"
    note = "" if adaptive else GRADIENT_NOTE.format(optimizer=record.optimizer_type)
    return Finding(
        FINDING_ID, Severity.ERROR if certain else Severity.WARNING,
        f"{_group(record)} moves the weights by at most {largest:.1e} of their size per "
        f"step at lr={pairs[0][1]:g}: {steps} steps change them by less than 1%, the model "
        f"does not train{note}", str(record.location or ""), SMALL_HINT)


def huge_finding(record: UpdateRecord) -> Finding | None:
    """The warning for a group that one step moves by as much as its own size."""
    pairs = _judged(record)
    if not pairs or record.values < HUGE_MIN_VALUES or math.isnan(record.ratios[0]):
        return None
    ratio, lr = max(pairs)
    if ratio < HUGE:
        return None
    return Finding(
        FINDING_ID, Severity.WARNING,
        f"{_group(record)} moves the weights by {_times(ratio)} times their own size in one "
        f"step at lr={lr:g}: each update overwrites what was learned (the loss jumps or "
        "diverges)", str(record.location or ""), LARGE_HINT)


def _times(ratio: float) -> str:
    """``4.9``, ``14``, ``260``, ``3.4e+09``: a ratio as a reader counts it."""
    return f"{ratio:.0f}" if 10 <= ratio < 1000 else f"{ratio:.2g}"
