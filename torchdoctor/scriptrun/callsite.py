"""Finding the line of the user's code behind an event (a forward, a step() call...).

"User code" is any frame outside torch, torchdoctor, pluggy and the standard library:
the first such frame up the stack is where the user called into torch.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import types
from functools import lru_cache

from torchdoctor.scriptrun.observations import CodeLocation


@lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    import pluggy
    import torch

    import torchdoctor
    import torchdoctor.checks  # lives in checks/ in a source checkout

    roots = [os.path.dirname(m.__file__ or "")
             for m in (torch, torchdoctor, torchdoctor.checks, pluggy)]
    roots.append(sysconfig.get_paths()["stdlib"])
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


@lru_cache(maxsize=4096)
def is_user_file(path: str) -> bool:
    """Whether ``path`` is user code (not torch, torchdoctor, pluggy or the stdlib).
    Cached: it runs for every frame of every observed event, and realpath is slow."""
    if path.startswith("<"):
        return False
    real = os.path.realpath(path)
    return not any(real.startswith(root) for root in _library_roots())


def display_path(path: str) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def location_of(frame: types.FrameType) -> CodeLocation:
    """The location of one frame."""
    return CodeLocation(display_path(frame.f_code.co_filename), frame.f_lineno,
                        frame.f_code.co_name)


def user_callsite(skip: int = 1) -> CodeLocation | None:
    """The innermost frame of user code on the current stack, or None."""
    frame: types.FrameType | None = sys._getframe(skip)
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            return location_of(frame)
        frame = frame.f_back
    return None


def user_frame_of_traceback(tb: types.TracebackType | None) -> CodeLocation | None:
    """The innermost frame of user code in a traceback (where the user's line raised)."""
    found = None
    while tb is not None:
        if is_user_file(tb.tb_frame.f_code.co_filename):
            found = CodeLocation(display_path(tb.tb_frame.f_code.co_filename), tb.tb_lineno,
                                 tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return found


def user_location_of_traceback(tb: types.TracebackType | None) -> CodeLocation | None:
    """The innermost frame of the user's code in a traceback (not torch, torchdoctor or
    its checks): where a diagnosis points."""
    found = None
    while tb is not None:
        if _is_user(tb.tb_frame):
            found = _location(tb.tb_frame, tb.tb_lineno)
        tb = tb.tb_next
    return found


def user_location_of_stack(frame: types.FrameType | None) -> CodeLocation | None:
    """The innermost frame of the user's code on the stack above ``frame``."""
    while frame is not None:
        if _is_user(frame):
            return _location(frame, frame.f_lineno)
        frame = frame.f_back
    return None


def _is_user(frame: types.FrameType) -> bool:
    return is_user_file(frame.f_code.co_filename)


def _location(frame: types.FrameType, line: int) -> CodeLocation:
    return CodeLocation(display_path(frame.f_code.co_filename), line, frame.f_code.co_name)
