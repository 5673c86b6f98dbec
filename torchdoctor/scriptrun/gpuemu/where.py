"""Whose code ran an operation: the user's (record it, at its line), or torchdoctor's
own instrumentation (never reported: it runs inside the emulation too)."""

from __future__ import annotations

import os
import re
import sys
import types
from functools import lru_cache

from torchdoctor.scriptrun.callsite import is_user_file, location_of
from torchdoctor.scriptrun.observations import CodeLocation

#: installed third-party packages (a user's own code is not installed into them)
_INSTALLED = re.compile(r"[/\\](site|dist)-packages[/\\]")


@lru_cache(maxsize=1)
def _our_roots() -> tuple[str, ...]:
    import torchdoctor
    import torchdoctor.checks

    return tuple(os.path.realpath(os.path.dirname(m.__file__ or "")) + os.sep
                 for m in (torchdoctor, torchdoctor.checks))


@lru_cache(maxsize=1)
def _transparent() -> tuple[str, ...]:
    """Our files that only pass a call on: this package (the emulation's own frames),
    the op tracer's function mode, which may sit above ours on the mode stack, and the
    instrumentation's replacements of torch functions (a wrapped ``F.cross_entropy``)."""
    from torchdoctor.hooks import optrace
    from torchdoctor.scriptrun import directcalls, wrappers

    return (os.path.realpath(os.path.dirname(__file__)) + os.sep,
            *(os.path.realpath(m.__file__ or "") for m in (optrace, wrappers, directcalls)))


@lru_cache(maxsize=4096)
def _kind(path: str) -> str:
    """``user``, ``pass`` (torch, the standard library, our pass-through frames) or
    ``ours`` (torchdoctor's instrumentation)."""
    real = os.path.realpath(path)
    if real.startswith(_our_roots()):  # first: torchdoctor may be installed too
        return "pass" if real.startswith(_transparent()) else "ours"
    if _INSTALLED.search(real) or not is_user_file(path):  # torchvision, timm, torch
        return "pass"
    return "user"


def user_frame() -> types.FrameType | None:
    """The innermost frame of user code on the stack, past torch, the standard library
    and the emulation; None when torchdoctor's own code comes first (instrumentation
    running inside the emulation is never reported)."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        kind = _kind(frame.f_code.co_filename)
        if kind == "user":
            return frame
        if kind == "ours":
            return None
        frame = frame.f_back
    return None


def user_line() -> CodeLocation | None:
    """The location of :func:`user_frame`."""
    frame = user_frame()
    return location_of(frame) if frame is not None else None


def is_ours(path: str) -> bool:
    """Whether ``path`` is one of torchdoctor's files (its checks included)."""
    return os.path.realpath(path).startswith(_our_roots())
