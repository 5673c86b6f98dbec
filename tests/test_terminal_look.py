"""The report as people see it in a real terminal: tmux panes 80 and 160 columns wide,
captured with ``capture-pane`` and compared with the captures kept in tests/terminal/.

Run times vary, so durations are masked (``0.00s``) before comparing; the findings,
the point of the look, are compared line for line. After an intended change of the
nan-loss wording or of the layout, look at the new captures and keep them:
``TORCHDOCTOR_UPDATE_CAPTURES=1 pytest tests/test_terminal_look.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

REPO = Path(__file__).resolve().parents[1]
CAPTURES = Path(__file__).resolve().parent / "terminal"
COMMAND = "torchdoctor check examples/bugs/nan_loss.py"
_DURATION = re.compile(r"\b\d+\.\d+s\b")


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def capture(width: int) -> tuple[str, str]:
    """Run COMMAND in a detached tmux pane ``width`` columns wide; return the pane as
    text and with its colour escapes (``capture-pane -e``)."""
    socket = f"torchdoctor-test-{os.getpid()}-{width}"
    program = (f"env -u COLUMNS -u NO_COLOR TERM=xterm-256color TORCHDOCTOR_OFFLINE=1 "
               f"{shlex.quote(sys.executable)} -m {COMMAND} 2>/dev/null; echo DONE-$?; "
               "sleep 300")
    _tmux(socket, "new-session", "-d", "-x", str(width), "-y", "80", "-c", str(REPO),
          "bash", "--norc", "--noprofile", "-c", program)
    try:
        deadline = time.monotonic() + 240
        while "DONE-" not in _tmux(socket, "capture-pane", "-p"):
            assert time.monotonic() < deadline, "the command did not finish in the pane"
            time.sleep(0.5)
        return _tmux(socket, "capture-pane", "-p"), _tmux(socket, "capture-pane", "-p", "-e")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=30)


def normalise(pane: str) -> str:
    """The command's output: up to the DONE line, durations masked, no trailing blanks."""
    lines = pane.split("\nDONE-")[0].splitlines()
    return "\n".join(_DURATION.sub("0.00s", line).rstrip() for line in lines).strip() + "\n"


def _findings_part(text: str) -> str:
    return text.split("overfit-one-batch")[1].split("\n\n", 1)[1]


@pytest.mark.parametrize("width", [80, 160])
def test_the_report_in_a_real_terminal(width: int) -> None:
    pane, coloured = capture(width)
    seen = normalise(pane)
    assert "DONE-1" in pane  # the error finding's exit code
    assert max(len(line) for line in seen.splitlines()) <= width
    assert "\033[31merror" in coloured or "\033[1;31merror" in coloured  # colour on a TTY
    expected_file = CAPTURES / f"check_nan_loss_{width}.txt"
    if os.environ.get("TORCHDOCTOR_UPDATE_CAPTURES"):
        expected_file.write_text(seen)
    expected = expected_file.read_text()
    assert _findings_part(seen) == _findings_part(expected)
    squeeze = re.compile(r" {2,}")
    assert squeeze.sub(" ", seen) == squeeze.sub(" ", expected)
