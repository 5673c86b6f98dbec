"""torchdoctor's validators inside your own code: one call, a typed error that names the
culprit and the fix, or None when all is well.

Each section below makes one classic mistake, catches the typed error and prints its
message, then shows the fixed call passing. Offline, about a second:

    python examples/instruments_validators.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchdoctor.errors import DiagnosisError
from torchdoctor.validators import check_batch, check_devices, check_loss_inputs, check_output


def show(title: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run one validator and print what it said."""
    try:
        call(*args, **kwargs)
    except DiagnosisError as error:
        print(f"[{type(error).__name__}] {title}\n  {error}\n")
    else:
        print(f"[ok] {title}\n")


class Classifier(nn.Module):
    def __init__(self, flatten: bool = True) -> None:
        super().__init__()
        self.flatten = nn.Flatten() if flatten else nn.Identity()
        self.fc1 = nn.Linear(784, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.flatten(x))))


def main() -> int:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    model = Classifier()

    # The meta device stands in for a GPU: mixing it with CPU tensors is the same fault.
    show("batch on another device than the model", check_devices, model,
         images.to("meta"), labels)
    show("fixed: everything on one device", check_devices, model, images, labels)

    raw_pixels = (images * 255).round().to(torch.uint8)
    show("raw uint8 pixels", check_batch, (raw_pixels, labels), num_classes=10)
    show("labels 1..10 for 10 classes", check_batch, (images, labels + 1), num_classes=10)
    show("fixed: ToTensor-scaled images, labels 0..9", check_batch, (images, labels),
         num_classes=10)

    show("forgot to flatten", check_output, Classifier(flatten=False), images, (None, 10))
    show("fixed: nn.Flatten() first", check_output, model, images, (None, 10))

    logits = model(images)
    show("softmax before CrossEntropyLoss", check_loss_inputs, logits.softmax(dim=1), labels,
         nn.CrossEntropyLoss())
    show("(B, 1) prediction against (B,) targets in MSELoss", check_loss_inputs,
         logits[:, :1], labels.float(), nn.MSELoss())
    show("fixed: raw logits into CrossEntropyLoss", check_loss_inputs, logits, labels,
         nn.CrossEntropyLoss())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
