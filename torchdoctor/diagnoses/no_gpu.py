"""A script that asks for CUDA on a machine without it (``.cuda()``, ``device="cuda"``):
recognised from the error it raised, answered with the portable idiom.

torch says "Found no NVIDIA driver on your system" or "Torch not compiled with CUDA
enabled", which reads like an installation problem; the fix the user needs is one line
of their script. Used by the runner, for a script that fails before any model ran (a
usage error) and for one that fails later (a finding about the run).
"""

from __future__ import annotations

from torchdoctor.findings import TARGET_CHECK_ID, Finding, Severity
from torchdoctor.scriptrun.observations import ErrorRecord

#: what torch's errors say when CUDA is asked for and there is none (driver missing, a
#: CPU-only build, no visible device)
_NO_CUDA = (
    "Found no NVIDIA driver on your system",
    "Torch not compiled with CUDA enabled",
    "No CUDA GPUs are available",
    "CUDA driver initialization failed",
    "no kernel image is available",  # not this GPU either: same advice holds
)

IDIOM = 'device = "cuda" if torch.cuda.is_available() else "cpu"'
HINT = (f"pick the device once, `{IDIOM}`, and move with `.to(device)` instead of "
        "`.cuda()` (or `device=\"cuda\"`), so the script runs on any machine; torchdoctor "
        "checks run on the CPU by default")


def asked_for_missing_cuda(error: ErrorRecord | None) -> bool:
    """Whether the script died asking for CUDA on a machine that has none."""
    if error is None:
        return False
    return any(text.lower() in error.message.lower() for text in _NO_CUDA)


def _what(error: ErrorRecord, *, where: bool) -> str:
    at = f" at {error.location}" if error.location and where else ""
    first = error.message.strip().splitlines()[0] if error.message.strip() else ""
    return (f"the script asks for CUDA{at} but this machine has none "
            f"({error.type_name}: {first.split('. ')[0]})")


def start_failure_message(error: ErrorRecord) -> str:
    """The usage-error message for a script that failed this way before any model ran."""
    return f"{_what(error, where=True)}. Fix: {HINT}"


def no_gpu_finding(error: ErrorRecord, path: str) -> Finding:
    """The finding for a script that failed this way after its models ran."""
    return Finding(TARGET_CHECK_ID, Severity.ERROR, _what(error, where=False),
                   str(error.location or path), HINT, explains_crash=True)


__all__ = ["IDIOM", "asked_for_missing_cuda", "no_gpu_finding", "start_failure_message"]
