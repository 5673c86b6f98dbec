"""How the command writes: colour only on a terminal (and never with ``NO_COLOR``), and a
closed pipe (``torchdoctor check train.py | head``) ending the output quietly."""

from __future__ import annotations

import os
import sys
from typing import TextIO


def use_color(stream: TextIO) -> bool:
    """ANSI colour on a terminal only; ``NO_COLOR`` (any value, https://no-color.org) and
    ``TERM=dumb`` turn it off."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def silence_stdout() -> None:
    """After a BrokenPipeError on stdout: point stdout at /dev/null, so that neither the
    rest of the output nor Python's flush at exit raises again (the Python docs' recipe
    for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured)
        pass


def write(text: str) -> bool:
    """Print ``text`` on stdout; False (and stdout silenced) when the reader has gone."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
        return False
    return True
