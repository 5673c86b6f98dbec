"""Typed exceptions raised by torchdoctor's public API.

Every exception a user may want to catch derives from :class:`TorchDoctorError`.
Those that describe a fault in the user's model or data also carry the
:class:`~torchdoctor.findings.Finding` that explains it, so a test or a monitor can
show the same table the CLI shows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torchdoctor.findings import Finding


class TorchDoctorWarning(UserWarning):
    """Warning category of findings reported as warnings (by :func:`torchdoctor.watch`
    with the ``"warn"`` policy; filter it with
    ``warnings.filterwarnings("error", category=TorchDoctorWarning)``)."""


class TorchDoctorError(Exception):
    """Base class of all torchdoctor exceptions."""


class UsageError(TorchDoctorError):
    """Bad input from the user: a target that cannot be loaded, a bad option.

    The CLI prints its message (one line, naming the fix) and exits 2.
    """


class TargetError(UsageError):
    """A TARGET that cannot be resolved: missing file, syntax error, no model found..."""


class DiagnosisError(TorchDoctorError):
    """A fault found in the user's model, data or training loop.

    ``findings`` holds the findings behind it (at least one).
    """

    def __init__(self, message: str, findings: list[Finding] | None = None) -> None:
        super().__init__(message)
        self.findings: list[Finding] = list(findings or [])


class ShapeError(DiagnosisError):
    """Shapes that do not fit: a module got an input it cannot take, or prediction
    and target broadcast against each other."""


class DeviceMismatchError(DiagnosisError):
    """Parameters, buffers or tensors on different devices."""


class NonFiniteError(DiagnosisError):
    """A loss, activation or gradient became NaN or infinite."""


class GradientError(DiagnosisError):
    """Gradients that are missing, carried over from an earlier step, vanishing or exploding."""


class ModeError(DiagnosisError):
    """Train/eval mode misuse: evaluating in training mode, training in eval mode."""


class BatchError(DiagnosisError):
    """A batch with non-finite values, an odd value range or labels out of range."""


class NumericsError(DiagnosisError):
    """A numerically unsafe expression (log of softmax, a hand-written BCE, a division
    by a sum that can be zero...) that produces inf/NaN sooner or later."""


class LossInputError(DiagnosisError):
    """Inputs that do not suit the loss function (softmax before CrossEntropyLoss...)."""


class UserCodeError(Exception):
    """Internal: the user's code (their model, loss, optimizer or batch), run by a check
    or an instrument, raised ``error``.

    Raised by :func:`user_code` so that the code around it can catch exactly the user's
    failures (which it reports, or leaves to the check that explains them) while a bug
    in torchdoctor's own analysis still propagates and shows as ``crashed``. Not part of
    the public API: it never leaves the check or instrument that caught it.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


@contextlib.contextmanager
def user_code() -> Iterator[None]:
    """Mark a block that runs the user's code: an Exception raised in it becomes a
    :class:`UserCodeError` (chained to the original). Keep the block to the user's
    call itself: whatever else it holds is taken for the user's code too (torchdoctor's
    hooks that run inside the user's forward cannot be told apart)."""
    try:
        yield
    except UserCodeError:
        raise
    except Exception as exc:  # the user's code raised: hand it on, labelled
        raise UserCodeError(exc) from exc
