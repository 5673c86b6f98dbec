"""overfit-one-batch: a healthy model drives the loss of one fixed batch near zero.

A copy of each model is trained on one batch with the setup's loss and optimizer (the
reference CrossEntropyLoss and Adam 1e-3 unless the file defines torchdoctor_loss() /
torchdoctor_optimizer()), for at most 200 steps. When it cannot fit the batch, the
check says why: every parameter frozen, parameters that get no gradient although
their module runs (a `.detach()` or `torch.no_grad()` in forward), parameters missing
from the optimizer, a learning rate far too small, a final ReLU/Softmax/Sigmoid that
keeps CrossEntropyLoss's logits non-negative, an initial loss far from ln(classes).
Model mode only: a script's fast run is too short to judge convergence.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torchdoctor.check import Check, SkipCheck
from torchdoctor.diagnoses.wording import name_list
from torchdoctor.findings import Finding

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate

    from ._overfit_one_batch_impl import Anatomy, Examination, Fit

#: the most seconds spent training one model (a slow model is reported, not judged)
BUDGET_SECONDS = 15.0
_NAMES_SHOWN = 4
#: on a synthetic task, a best loss below this share of the first one is partial success
_PARTLY = 0.5
#: a learning rate below this cannot fit a batch in a few hundred steps
_TINY_LR = 1e-5


class OverfitOneBatchCheck(Check):
    """A copy of the model must be able to fit one batch; if not, the reason."""

    id = "overfit-one-batch"
    summary = "a copy must fit one batch: no gradient, frozen, not in optimizer, tiny lr..."

    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """Examine and train a copy of the candidate on one batch."""
        from ._overfit_one_batch_impl import examine

        found = examine(ctx, candidate, min(BUDGET_SECONDS, ctx.options.timeout / 4))
        if found is None:
            raise SkipCheck("the batch does not run through the model (see shape-mismatch)")
        verdict = _Verdict(self, candidate.name, found)
        verdict.synthetic = ctx.training_setup(candidate).source.get("batch") == "synthetic"
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
        #: trained on a synthetic task (torchdoctor's guess, not the user's data)
        self.synthetic = False

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
                f"{self.name}: the loss does not depend on any trainable parameter: the "
                "output is detached or computed under `torch.no_grad()` in forward",
                location=f"{self.name}: forward", hint=_CUT_HINT)]
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
                f"{self.name}: {_names(a.cut)} get no gradient although they require one "
                f"and {module} runs: the forward cuts the graph after it (or its output "
                "never reaches the loss)"
                f"{self._outcome()}", location=a.cut_line or f"{self.name}: {module}",
                hint=_CUT_HINT))
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
        found = []
        if a.frozen:
            found.append(self.check.error(
                f"{self.name} cannot fit one batch ({self.outcome}) and {_names(a.frozen)} "
                "are frozen (requires_grad=False)", location=f"{self.name}: {a.frozen[0]}",
                hint="unfreeze them (`requires_grad_(True)`), or train longer if the frozen "
                "part is a pretrained backbone"))
        if a.not_in_optimizer:
            found.append(self.check.error(
                f"{self.name} cannot fit one batch ({self.outcome}): the optimizer does not "
                f"hold {_names(a.not_in_optimizer)}, so they get gradients but never change",
                location=f"{self.name}: {a.not_in_optimizer[0]}",
                hint="build the optimizer over all of them: `Adam(model.parameters())`"))
        found += self._lr_reasons(fit)
        if not found and not a.cut and a.final is None:
            found.append(self._unexplained(fit))
        return found

    def _lr_reasons(self, fit: Fit) -> list[Finding]:
        a = self.anatomy
        if not fit.finite or fit.losses[-1] > 1.5 * fit.initial:
            return [self.check.error(
                f"{self.name}: the loss diverges while fitting one batch ({fit.initial:.3g} "
                f"-> {fit.losses[-1]:.3g}) with {a.optimizer} lr {a.lr:g}",
                location=f"{self.name}: {a.optimizer}", hint="lower the learning rate "
                "(1e-3 for Adam), or clip gradients")]
        if a.lr is not None and a.lr < _TINY_LR:
            return [self.check.error(
                f"{self.name}: the learning rate {a.lr:g} is far too small: {self.outcome}",
                location=f"{self.name}: {a.optimizer}",
                hint="use lr=1e-3 for Adam/AdamW (0.01-0.1 with momentum=0.9 for SGD)")]
        return []

    def _unexplained(self, fit: Fit) -> Finding:
        a = self.anatomy
        if fit.out_of_time:
            return self.check.info(
                f"{self.name}: training one batch did not finish within "
                f"{BUDGET_SECONDS:g} s ({self.outcome}); not judged",
                location=f"{self.name}: <model>", hint="run with a smaller model or batch")
        if fit.still_falling:
            return self.check.warning(
                f"{self.name} fits one batch only slowly ({self.outcome}, still falling) with "
                f"{a.optimizer} lr {a.lr:g}", location=f"{self.name}: {a.optimizer}",
                hint="raise the learning rate, or use Adam 1e-3 (SGD: add momentum=0.9)")
        if self.synthetic and fit.best < _PARTLY * fit.initial:
            # a guessed task half fitted, with no structural cause: not proof of a bug
            return self.check.warning(
                f"{self.name} fits one synthetic batch only partly ({self.outcome}) with "
                f"{a.optimizer} lr {a.lr:g}", location=f"{self.name}: <model>",
                hint="define torchdoctor_batch() and torchdoctor_loss() to judge it on "
                "real data; a higher learning rate or less dropout may fit it")
        return self.check.error(
            f"{self.name} cannot fit one batch: {self.outcome}, stuck at "
            f"{fit.losses[-1]:.3g}", location=f"{self.name}: <model>",
            hint="check that the loss gets the raw model output and the matching targets, "
            "that forward uses every layer it should, and try Adam with lr=1e-3")

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
                f"{self.name}: {_names(a.frozen)} are frozen (requires_grad=False); the rest "
                "fits one batch, fine if intended", location=f"{self.name}: {a.frozen[0]}"))
        if a.not_in_optimizer:
            found.append(self.check.info(
                f"{self.name}: the optimizer does not hold {_names(a.not_in_optimizer)}, so "
                "they never change; fine if intended", location=f"{self.name}: "
                f"{a.not_in_optimizer[0]}", hint="freeze them explicitly with "
                "`requires_grad_(False)` to save their gradients"))
        if a.unused:
            found.append(self.check.info(
                f"{self.name}: {name_list(a.unused)} are never used in forward",
                location=f"{self.name}: {a.unused[0]}",
                hint="remove the unused layers, or call them in forward"))
        return found

    def _outcome(self) -> str:
        if self.fit is None:
            return ""
        verdict = "it still fits one batch" if self.fitted else "it cannot fit one batch"
        return f" ({verdict}: {self.outcome})"


_CUT_HINT = ("remove the `.detach()` / `torch.no_grad()` / `.item()` in forward; to freeze "
             "layers on purpose use `layer.requires_grad_(False)`")


def _names(names: list[str]) -> str:
    return name_list(names, _NAMES_SHOWN)
