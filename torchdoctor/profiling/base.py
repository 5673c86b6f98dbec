"""Names and argument checks every profiling module shares."""

from __future__ import annotations

from torchdoctor.errors import UsageError
from torchdoctor.report import FORMATS

PHASES = ("data", "forward", "backward", "step", "other")
DEFAULT_TOP = 10

#: prefix of the ``record_function`` range each phase opens (``torchdoctor.forward``...)
LABEL = "torchdoctor."
#: operators under this range are the doctor's own bookkeeping, not the user's cost
INTERNAL = "torchdoctor.instrument"
#: how a profiled script can end without finishing
UNFINISHED = ("crashed", "timeout", "exited")


def is_cuda(device: str) -> bool:
    """Whether ``device`` names a CUDA device (``cuda``, ``cuda:1``...)."""
    return device.startswith("cuda")


def check_device(device: str) -> None:
    """Raise :class:`UsageError` unless ``device`` names a usable torch device."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"bad device {device!r}: {exc}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but CUDA is not available here; "
                         "use --device cpu")


def check_count(name: str, value: int, least: int) -> None:
    """Raise :class:`UsageError` unless ``value`` is an integer >= ``least``."""
    if not isinstance(value, int) or value < least:
        raise UsageError(f"{name} must be an integer >= {least}, not {value!r}")


def check_format(fmt: str) -> None:
    """Raise :class:`UsageError` unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def check_phase(name: str) -> None:
    """Raise :class:`UsageError` unless ``name`` is one of :data:`PHASES`."""
    if name not in PHASES:
        raise UsageError(f"unknown phase {name!r}; use one of {', '.join(PHASES)}")


__all__ = ["DEFAULT_TOP", "FORMATS", "PHASES", "check_count", "check_device", "check_format",
           "check_phase", "is_cuda"]
