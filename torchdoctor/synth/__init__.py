"""Model mode for any model: the input batch and a matching loss synthesised from the
model itself (:mod:`.specs` guesses inputs from the first layers, :mod:`.task` derives a
learnable task from the output, :mod:`.resolve` chooses per model between the user's
batch, the FashionMNIST reference and a synthetic batch)."""

from __future__ import annotations

from torchdoctor.synth.resolve import Choice, choose_setup
from torchdoctor.synth.task import SyntheticLoss, main_output

__all__ = ["Choice", "SyntheticLoss", "choose_setup", "main_output"]
