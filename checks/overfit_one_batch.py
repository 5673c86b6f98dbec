"""overfit-one-batch: a healthy model drives the loss of one fixed batch near zero.

A copy of each model is trained on one batch with the setup's loss and optimizer (the
script's own, captured in script mode, when it trained the model with one optimizer on
a supervised loss: :mod:`torchdoctor.engine.usersetup`; else the reference
CrossEntropyLoss and Adam 1e-3 unless the file defines torchdoctor_loss() /
torchdoctor_optimizer()) by :mod:`torchdoctor.diagnoses.overfit`'s loop, the one
``assert_overfits_batch`` uses (its step budget and target). When it cannot fit the
batch, the check says why (:mod:`torchdoctor.diagnoses.anatomy`): every parameter
frozen, parameters that get no gradient although their module runs (a `.detach()` or
`torch.no_grad()` in forward), parameters missing from the optimizer, a learning rate
far too small, a final ReLU/Softmax/Sigmoid that keeps CrossEntropyLoss's logits
non-negative, an initial loss far from ln(classes). With the script's own setup only a
loss that does not move (chance level) or diverges is an error: a partial fit (label
smoothing, weight decay, a small learning rate) is an info.
Model mode only: a script's fast run is too short to judge convergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torchdoctor.check import Check, SkipCheck
from torchdoctor.diagnoses import overfit, parameters
from torchdoctor.diagnoses.wording import name_list
from torchdoctor.findings import Finding

if TYPE_CHECKING:
    from torchdoctor.diagnoses.anatomy import Anatomy
    from torchdoctor.diagnoses.overfit import Fit
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import ScriptRun

#: on a synthetic task, a best loss below this share of the first one is partial success
_PARTLY = 0.5
#: a learning rate below this cannot fit a batch in a few hundred steps
_TINY_LR = 1e-5


@dataclass
class Examination:
    """Anatomy and fit of one candidate."""

    anatomy: Anatomy
    fit: Fit | None
    batch_size: int | None
    #: the exception training the copy raised (the user's optimizer hook...), if any
    error: str = ""


def examine(ctx: CheckContext, candidate: ModelCandidate, budget: float) -> Examination | None:
    """Examine and train a copy of ``candidate``; None when the setup's batch does not
    run through it (shape-mismatch and device-mismatch say why)."""
    from torchdoctor.diagnoses.anatomy import anatomy_of, probe
    from torchdoctor.tensors import first_tensor

    setup = ctx.training_setup(candidate)
    model = ctx.fresh_model(candidate)
    batch = setup.batch(ctx.options.device)
    loss_fn = setup.make_loss()
    optimizer = setup.optimizer_for(model)
    try:
        seen = probe(model, batch, loss_fn)
    except Exception:  # the user's model or loss does not take the batch: skipped
        return None
    anatomy = anatomy_of(model, seen, loss_fn, optimizer, candidate.name, batch[0])
    first = first_tensor(batch[0])
    size = int(first.shape[0]) if first is not None and first.dim() else None
    if not (anatomy.trainable and anatomy.loss_has_grad):
        return Examination(anatomy, None, size)
    try:
        fit = overfit.fit_one_batch(model, batch, loss_fn, optimizer, budget=budget)
    except Exception as exc:  # the user's code raised: report it, do not crash the check
        return Examination(anatomy, None, size, f"{type(exc).__name__}: {exc}")
    return Examination(anatomy, fit, size)


def _lr_certainly_negligible(run: ScriptRun) -> bool:
    """Whether learning-rate reports an error (a certain one) for the script's updates."""
    from torchdoctor.diagnoses import learning_rate
    from torchdoctor.findings import Severity

    found = [learning_rate.negligible_finding(r) for r in run.update_sizes]
    return any(f is not None and f.severity is Severity.ERROR for f in found)


class OverfitOneBatchCheck(Check):
    """A copy of the model must be able to fit one batch; if not, the reason."""

    id = overfit.FINDING_ID
    summary = "a copy must fit one batch: no gradient, frozen, not in optimizer, tiny lr..."

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """Examine and train a copy of the candidate on one batch."""
        found = examine(ctx, candidate, min(overfit.BUDGET_SECONDS, ctx.options.timeout / 4))
        if found is None:
            raise SkipCheck("the batch does not run through the model (see shape-mismatch)")
        verdict = _Verdict(self, candidate.name, found)
        setup = ctx.training_setup(candidate)
        verdict.synthetic = setup.source.get("batch") == "synthetic"
        if setup.from_script:
            verdict.use_script_setup(setup.summary, setup.origin)
            # the script's own loss went NaN/inf: nan-loss reports that cause, once
            verdict.diverged_in_script = ctx.run is not None and bool(ctx.run.nonfinite)
            # parameters in no optimizer that the script's gradients showed are
            # params-not-updating's finding
            verdict.unoptimized_in_script = ctx.run is not None and \
                bool(ctx.run.unoptimized_grads)
            # updates the script's own steps showed too small to train are learning-rate's
            verdict.lr_in_script = ctx.run is not None and _lr_certainly_negligible(ctx.run)
        return verdict.findings()


class _Verdict:
    """Turns one examination into findings."""

    def __init__(self, check: Check, name: str, found: Examination) -> None:
        self.check = check
        self.name = name
        self.anatomy: Anatomy = found.anatomy
        self.fit: Fit | None = found.fit
        self.fitted = found.fit is not None and found.fit.converged
        self.outcome = "" if found.fit is None else found.fit.describe(found.batch_size)
        self.error = found.error
        self.batch_size = found.batch_size
        #: trained on a synthetic task (torchdoctor's guess, not the user's data)
        self.synthetic = False
        #: the script's own setup (its description), and where its optimizer was built
        self.script_setup = ""
        self.origin = ""
        self.diverged_in_script = False
        self.unoptimized_in_script = False
        self.lr_in_script = False

    def use_script_setup(self, description: str, origin: str) -> None:
        """Judge a copy trained with the script's own setup: only a loss that does not
        decrease at all (or diverges) is an error; a setup that fits one batch partly
        (label smoothing, weight decay, a small learning rate) is not accused."""
        self.script_setup, self.origin = description, origin
        if self.outcome:
            self.outcome += " from the script"

    def findings(self) -> list[Finding]:
        """Structural faults first; the reasons for not fitting when it did not."""
        a = self.anatomy
        if not a.trainable:
            return [self.check.error(
                f"{self.name}: every parameter is frozen (requires_grad=False), so nothing "
                "can learn", location=f"{self.name}: {a.frozen[0] if a.frozen else '<model>'}",
                hint="call `requires_grad_(True)` on the layers to train")]
        if not a.loss_has_grad:
            return [self.check.error(
                f"{self.name}: {parameters.NO_GRAPH_PHRASE}: the output is detached or "
                "computed under `torch.no_grad()` in forward",
                location=f"{self.name}: forward", hint=parameters.NO_GRAPH_HINT)]
        found = self._structural() + self._initial_loss()
        if self.error:
            found.append(self.check.info(
                f"{self.name}: training a copy on one batch raised {self.error}",
                location=f"{self.name}: <model>", hint="run one training step by hand to "
                "see the full traceback"))
            return found
        if self.fit is not None and not math.isfinite(self.fit.initial):
            found.append(self.check.info(
                f"{self.name}: the loss is NaN/inf from the first step, so fitting one batch "
                "was not judged", location=f"{self.name}: <model>",
                hint="see the nan-loss check for where it starts"))
            return found
        found += self._reasons() if not self.fitted else self._harmless()
        return found

    def _structural(self) -> list[Finding]:
        a, found = self.anatomy, []
        if a.cut:
            module = a.cut_module.describe() if a.cut_module else "forward"
            found.append(self.check.error(
                f"{self.name}: {parameters.cut_phrase(a.cut, module)}{self._outcome()}",
                location=a.cut_line or f"{self.name}: {module}",
                hint=parameters.NO_GRADIENT_HINT))
        if a.final is not None:
            found.append(self.check.error(
                f"{self.name}: the model's last operation is {a.final.name}, so the logits "
                f"given to CrossEntropyLoss can never be negative{self._outcome()}",
                location=a.final.location, hint="remove the final activation: return the raw "
                "output of the last Linear layer (CrossEntropyLoss applies log_softmax)"))
        return found

    def _reasons(self) -> list[Finding]:
        """Why the copy did not fit the batch (it did not)."""
        a, fit = self.anatomy, self.fit
        assert fit is not None
        blew_up = overfit.diverged(self.name, fit, self._optimizer()) is not None
        if self.script_setup and ((blew_up and self.diverged_in_script) or
                                  (a.not_in_optimizer and self.unoptimized_in_script) or
                                  (fit.flat and self.lr_in_script)):
            return []  # the script's own steps showed that cause: its check reports it
        if self.script_setup and not fit.stuck and not blew_up:
            return [self._partly()] if not a.cut and a.final is None else []
        found = []
        if a.frozen:
            found.append(self.check.error(
                f"{self.name} cannot fit one batch ({self.outcome}) and "
                f"{parameters.frozen_phrase(a.frozen)}", location=f"{self.name}: {a.frozen[0]}",
                hint=parameters.FROZEN_HINT))
        if a.not_in_optimizer:
            found.append(self.check.error(
                f"{self.name} cannot fit one batch ({self.outcome}): "
                f"{parameters.not_held_phrase(a.not_in_optimizer)}",
                location=f"{self.name}: {a.not_in_optimizer[0]}",
                hint=parameters.NOT_IN_OPTIMIZER_HINT))
        found += self._lr_reasons(fit)
        if not found and not a.cut and a.final is None:
            found.append(self._unexplained(fit))
        return found

    def _lr_reasons(self, fit: Fit) -> list[Finding]:
        a = self.anatomy
        blew_up = overfit.diverged(self.name, fit, self._optimizer())
        where = self.origin or f"{self.name}: {a.optimizer}"
        if blew_up is not None:
            return [self.check.error(blew_up + self._with_setup(), location=where,
                                     hint=overfit.DIVERGED_HINT)]
        decay = overfit.heavy_decay(a.decay)
        if decay:
            return [self.check.error(
                f"{self.name}: {decay}: {self.outcome}{self._with_setup()}", location=where,
                hint=overfit.DECAY_HINT)]
        if a.lr is not None and a.lr < _TINY_LR:
            return [self.check.error(
                f"{self.name}: the learning rate {a.lr:g} is far too small: {self.outcome}"
                f"{self._with_setup()}", location=where,
                hint="use lr=1e-3 for Adam/AdamW (0.01-0.1 with momentum=0.9 for SGD)")]
        return []

    def _unexplained(self, fit: Fit) -> Finding:
        a = self.anatomy
        if fit.out_of_time:
            return self.check.info(
                f"{self.name}: training one batch did not finish within "
                f"{overfit.BUDGET_SECONDS:g} s ({self.outcome}); not judged",
                location=f"{self.name}: <model>", hint="run with a smaller model or batch")
        if fit.still_falling and self.synthetic:
            # a guessed task fitted slowly says little about the model (a Linear(2, 2) on
            # an inferred regression task, at the reference Adam 1e-3): not a warning
            return self.check.info(
                overfit.slowly(self.name, fit, self._optimizer(), self.batch_size),
                location=f"{self.name}: {a.optimizer}", hint="define torchdoctor_batch() "
                "and torchdoctor_loss() to judge it on real data")
        if fit.still_falling:
            return self.check.warning(
                overfit.slowly(self.name, fit, self._optimizer(), self.batch_size),
                location=f"{self.name}: {a.optimizer}", hint=overfit.SLOW_HINT)
        if self.script_setup:
            return self.check.error(
                overfit.does_not_learn(self.name, fit, self.script_setup, a.classes,
                                       self.batch_size),
                location=self.origin or f"{self.name}: <model>",
                hint=overfit.SCRIPT_SETUP_HINT)
        if self.synthetic and fit.best < _PARTLY * fit.initial:
            # a guessed task half fitted, with no structural cause: not proof of a bug
            return self.check.warning(
                f"{self.name} fits one synthetic batch only partly ({self.outcome}) with "
                f"{self._optimizer()}", location=f"{self.name}: <model>",
                hint="define torchdoctor_batch() and torchdoctor_loss() to judge it on "
                "real data; a higher learning rate or less dropout may fit it")
        return self.check.error(overfit.cannot_fit(self.name, fit, self.batch_size),
                                location=f"{self.name}: <model>", hint=overfit.CANNOT_FIT_HINT)

    def _initial_loss(self) -> list[Finding]:
        """The first loss against ln(classes): far above means oversized logits."""
        from torchdoctor.reference.trainer import expected_initial_loss

        a, fit = self.anatomy, self.fit
        if fit is None or not a.classes or a.classes < 2 or not fit.finite:
            return []
        expected = expected_initial_loss(a.classes)
        if fit.initial <= 3 * expected:
            return []
        make = self.check.info if self.fitted else self.check.warning
        return [make(f"{self.name}: initial loss {fit.initial:.3g}, expected ~{expected:.3g} "
                     f"for {a.classes} classes: the initial logits are too large",
                     location=f"{self.name}: <model>", hint="check the weight init (no "
                     "large constant scales) and normalise the inputs (e.g. to [0, 1])")]

    def _harmless(self) -> list[Finding]:
        """Facts worth knowing when the copy fitted the batch anyway."""
        a, found = self.anatomy, []
        if a.frozen:
            found.append(self.check.info(
                f"{self.name}: {parameters.frozen_phrase(a.frozen)}; the rest fits one "
                "batch, fine if intended", location=f"{self.name}: {a.frozen[0]}"))
        if a.not_in_optimizer and not self.unoptimized_in_script:
            found.append(self.check.info(
                f"{self.name}: {parameters.not_held_phrase(a.not_in_optimizer)}; fine if "
                "intended", location=f"{self.name}: {a.not_in_optimizer[0]}",
                hint=parameters.NOT_IN_OPTIMIZER_HINT))
        if a.unused:
            found.append(self.check.info(
                f"{self.name}: {name_list(a.unused)} are never used in forward",
                location=f"{self.name}: {a.unused[0]}",
                hint="remove the unused layers, or call them in forward"))
        return found

    def _partly(self) -> Finding:
        """The script's setup lowers the loss of one batch without reaching the target."""
        assert self.fit is not None
        slow = self.fit.still_falling
        if self.fit.flat:  # only a run cut by the time budget gets here flat
            return self.check.info(
                f"{self.name}: the loss did not move in the {len(self.fit.losses)} steps "
                f"with your setup that fit the time budget ({self.outcome}, "
                f"{self.script_setup}); not judged", location=self.origin or self.name,
                hint="")
        return self.check.info(
            f"{self.name} fits one batch {'slowly' if slow else 'only partly'} with your "
            f"setup ({self.outcome}, {self.script_setup}); not judged an error: the loss "
            "decreases", location=self.origin or self.name,
            hint="" if not slow else overfit.SLOW_HINT)

    def _with_setup(self) -> str:
        return f" (your setup: {self.script_setup})" if self.script_setup else ""

    def _optimizer(self) -> str:
        a = self.anatomy
        return f"{a.optimizer} lr {a.lr:g}" if a.lr is not None else a.optimizer

    def _outcome(self) -> str:
        if self.fit is None:
            return ""
        verdict = "it still fits one batch" if self.fitted else "it cannot fit one batch"
        return f" ({verdict}: {self.outcome})"
