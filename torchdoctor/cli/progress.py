"""A one-line progress display on stderr while checks run (only on a TTY)."""

from __future__ import annotations

import sys


class Progress:
    """``torchdoctor: train.py [3/7] nan-loss`` rewritten in place; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._target = ""
        self._total = 0
        self._done = 0

    def start(self, target: str, check_ids: list[str]) -> None:
        """A new target: announce the preparation (the script run)."""
        self._target, self._total, self._done = target, len(check_ids), 0
        self._show("running the target")

    def step(self, check_id: str) -> None:
        """Announce the next check."""
        self._done += 1
        self._show(f"[{self._done}/{self._total}] {check_id}")

    def done(self) -> None:
        """Clear the line."""
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _show(self, what: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\033[Ktorchdoctor: {self._target} {what}")
            sys.stderr.flush()
