"""Kept for imports of ``torchdoctor.validators.loss_rules``: the rules per loss live in
:mod:`torchdoctor.diagnoses.loss_rules`."""

from __future__ import annotations

from torchdoctor.diagnoses.broadcasting import broadcast_shape
from torchdoctor.diagnoses.loss_rules import (
    RULES,
    SHAPE_KINDS,
    LossInputProblem,
    common_problems,
)

__all__ = ["RULES", "SHAPE_KINDS", "LossInputProblem", "broadcast_shape", "common_problems"]
