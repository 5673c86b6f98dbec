"""Kept for imports of ``torchdoctor.validators.shape_errors``: the explanation of
shape errors lives in :mod:`torchdoctor.diagnoses.shapes`."""

from __future__ import annotations

from torchdoctor.diagnoses.shapes import explain_shape_error

__all__ = ["explain_shape_error"]
