"""torchdoctor's hook sets inside your own code: shapes, NaN/inf, dead units.

Each hook set is a context manager that removes every hook it installed when the
block ends (also when it raises) and keeps only summaries, never your tensors.
Runs offline in about a second on random FashionMNIST-shaped data:

    python examples/instruments_hooks.py
"""

from __future__ import annotations

import torch
from torch import nn

from torchdoctor.hooks import ActivationStats, NonFiniteTracer, ShapeTracer, localize_nonfinite


def classifier(flatten: bool = True) -> nn.Sequential:
    """The FashionMNIST MLP; without the Flatten it crashes on (N, 1, 28, 28) images."""
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    return nn.Sequential(*layers, nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def trace_shapes(images: torch.Tensor) -> None:
    print("== ShapeTracer: every module call, in execution order")
    model = classifier()
    with ShapeTracer(model) as shapes:
        model(images)
    print(shapes.table())

    print("\n== ShapeTracer: where did the forward crash?")
    broken = classifier(flatten=False)
    try:
        with ShapeTracer(broken) as shapes:
            broken(images)
    except RuntimeError:
        pass  # the hooks are gone already: the tracer removed them on the way out
    assert shapes.failed_at is not None
    failed = shapes.failed_at
    print(f"raised in {failed.module.describe()} on input {failed.inputs[0].describe()}")
    print(f"  {shapes.failure}")


class LogFeatures(nn.Module):
    """A log transform without a guard: log of a negative number is NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def find_nans(images: torch.Tensor, labels: torch.Tensor) -> None:
    print("\n== NonFiniteTracer: the first module whose output went NaN/inf")
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), LogFeatures(), nn.Linear(32, 10))
    with NonFiniteTracer(model) as nan:
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
    print(f"first non-finite output: {nan.first_output and nan.first_output.qualname}, "
          f"first non-finite gradient: {nan.first_gradient and nan.first_gradient.qualname}")
    for finding in nan.findings():  # the first cause only; the rest follows from it
        print(f"  {finding.message}\n  fix: {finding.hint}")

    print("\n== localize_nonfinite: replay one step on a copy (is the loss to blame?)")
    healthy = classifier()

    def log_of_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits * 1e4, dim=1)  # overconfident: some probs are 0
        return nn.functional.nll_loss(torch.log(probs), target)

    report = localize_nonfinite(healthy, images, log_of_softmax, labels)
    print(f"first non-finite value: {report.kind} (model output finite: "
          f"{report.output_finite}, loss: {report.loss})")
    for finding in report.findings:
        print(f"  {finding.message}\n  fix: {finding.hint}")


def dead_units(images: torch.Tensor) -> None:
    print("\n== ActivationStats: dead ReLU units and saturated sigmoids")
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10),
                          nn.Sigmoid())
    with torch.no_grad():
        model[1].bias[:16] = -50.0  # a bad init: a quarter of the units never fire
        model[3].weight.mul_(40.0)  # huge logits: the sigmoid saturates
    with ActivationStats(model) as stats:
        for batch in images.split(16):
            model(batch)
    print(stats.table())
    print(f"dead fraction of layer 2: {stats.dead_relu['2']:.0%}")


def main() -> int:
    torch.manual_seed(0)  # the same layer initialisations, so the same output, every run
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    trace_shapes(images)
    find_nans(images, labels)
    dead_units(images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
