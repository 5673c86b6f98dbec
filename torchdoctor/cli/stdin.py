"""The standard input a checked script reads: never the terminal's.

A script that waits for ``input()`` would otherwise sit behind the progress line until
``--timeout``. It gets end-of-file at once instead (or the content of ``--stdin FILE``),
and the first place that read it is remembered so the report can say so.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

from torchdoctor.errors import UsageError


class ScriptStdin(io.StringIO):
    """An in-memory stdin that remembers where user code first read it."""

    def __init__(self, content: str = "", source: str | None = None) -> None:
        super().__init__(content)
        self.source = source  #: the --stdin file, or None (empty stdin)
        self.read_at: str | None = None  #: ``path:line`` of the first read by user code
        self.read_any = False
        self.hit_eof = False  #: a read found nothing left

    def _note_read(self) -> None:
        if not self.read_any:
            from torchdoctor.scriptrun.callsite import user_callsite

            self.read_any = True
            where = user_callsite()
            self.read_at = str(where) if where is not None else None

    def read(self, size: int | None = -1) -> str:
        self._note_read()
        return self._seen(super().read(size), size)

    def readline(self, size: int = -1, /) -> str:  # type: ignore[override]
        self._note_read()
        return self._seen(super().readline(size), size)

    def readlines(self, hint: int = -1, /) -> list[str]:  # type: ignore[override]
        self._note_read()
        return self._seen_lines(super().readlines(hint))

    def _seen(self, text: str, size: int | None) -> str:
        if not text and size != 0:
            self.hit_eof = True
        return text

    def _seen_lines(self, lines: list[str]) -> list[str]:
        if not lines:
            self.hit_eof = True
        return lines

    def isatty(self) -> bool:
        return False

    @property
    def ran_dry(self) -> bool:
        """Whether the script asked for input and there was none (or none left)."""
        return self.hit_eof

    def message(self, *, where: bool = True) -> str:
        """What happened, for the report (``where``: with the line that read)."""
        where_text = f" at {self.read_at}" if self.read_at and where else ""
        if self.source is None:
            return (f"the script asked for input{where_text} (input() or sys.stdin) and got "
                    "end-of-file: a checked script's stdin is not the terminal")
        return f"the script read all of --stdin {self.source}{where_text} and asked for more"

    def hint(self) -> str:
        """What the user can do."""
        if self.source is None:
            return ("pass the answers with --stdin FILE (one per line), or make the script "
                    "take them as arguments (--script-args '...')")
        return f"add the missing answers to {self.source}"


def stdin_content(source: str | None) -> str:
    """What ``--stdin SOURCE`` gives: a file's text, torchdoctor's own stdin for ``-``,
    nothing for None. A file that cannot be read is a UsageError."""
    if source is None:
        return ""
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--stdin {source}: cannot be read: {exc}") from None


@contextlib.contextmanager
def script_stdin(content: str = "", source: str | None = None) -> Iterator[ScriptStdin]:
    """``sys.stdin`` (and so the builtin ``input()``, which reads it when stdin is not a
    terminal) replaced by ``content`` for the run; restored afterwards. ``source``: the
    --stdin it came from, for the report."""
    stream = ScriptStdin(content, source)
    saved = sys.stdin
    sys.stdin = stream
    try:
        yield stream
    finally:
        sys.stdin = saved
