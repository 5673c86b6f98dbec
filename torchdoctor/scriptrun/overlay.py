"""The scratch overlay: nothing of the user's is written while their script runs.

Script mode runs the user's program, side effects included. While it runs, every file
it writes, appends to, creates, renames, deletes or makes a directory for goes to a
scratch directory that mirrors the real path
(:class:`~torchdoctor.scriptrun.overlaypaths.ScratchView`), and what it reads back is
what it wrote: ``torch.save`` then ``torch.load`` works, ``os.path.exists`` after a save
is True, a deleted file reads as missing. The user's files are never modified or
deleted. When the run ends the patches are undone, the scratch
directory is removed and the run records what the script would have written
(:attr:`ScriptRun.written`).

Redirected: ``builtins.open`` and ``io.open``; ``os.open``, ``stat``/``lstat``/``access``,
``mkdir`` (so ``os.makedirs``, ``pathlib.Path.mkdir``), ``remove``/``unlink``/``rmdir``,
``rename``/``replace``, ``listdir``/``scandir`` (so ``os.walk``, ``glob``),
``chmod``/``utime``/``truncate`` and the xattr calls (so ``shutil.copy*`` and
``Path.touch``), ``chdir``/``getcwd`` (a directory the script made can be entered);
``shutil.rmtree``; ``torch.save``/``torch.load`` with a path (torch opens str paths in
C++); numpy's ``save``/``savez``/``savez_compressed``/``savetxt`` and
``load``/``loadtxt``/``genfromtxt``. pathlib, shutil, tempfile, logging, Pillow and
matplotlib's ``savefig`` go through these. DataLoader workers started by fork inherit
the overlay. Not covered: processes the script spawns (``spawn`` start method,
``subprocess``), C extensions that open files themselves, and functions a library bound
before the run (``from os import remove`` executed earlier): see the README.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from torchdoctor.findings import WrittenFile
from torchdoctor.scriptrun.callsite import display_path
from torchdoctor.scriptrun.observations import ScriptRun
from torchdoctor.scriptrun.overlaypaths import ScratchView, exempt_prefixes
from torchdoctor.scriptrun.patches import PatchSet, RunLink
from torchdoctor.scriptrun.redirects import (
    Link,
    Wrapper,
    changing,
    chdir,
    getcwd,
    listdir,
    mkdir,
    opening,
    os_open,
    path_argument,
    reading,
    removing,
    renaming,
    rmtree,
    scandir,
)

#: files listed in the report (the rest are counted)
LISTED_FILES = 20


class ScratchOverlay:
    """Context manager: the user's files are read-only to the process while active.

    ``protected``: directories (besides the working directory) that are redirected even
    where they lie below an exempt one (a project in the temporary directory): the
    script's own directory.
    """

    def __init__(self, run: ScriptRun, *protected: str | os.PathLike[str]) -> None:
        self.run = run
        self._protected = (os.getcwd(), *(os.fspath(p) for p in protected))
        self._patches = PatchSet()
        self._root = ""
        self._view: ScratchView | None = None
        self._link: Link | None = None

    def __enter__(self) -> ScratchOverlay:
        self._root = tempfile.mkdtemp(prefix="torchdoctor-scratch-")
        self._view = ScratchView(self._root, exempt_prefixes(), self._protected)
        self._link = RunLink(self._view)
        try:
            self._patches.install(_installers(self._link))
        except BaseException:
            shutil.rmtree(self._root, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._link is not None and self._view is not None
        self._link.cut()
        self._patches.undo()
        try:
            if self._view.unscratch(os.getcwd()) != os.getcwd():  # the script is in there
                os.chdir(self._protected[0])
            written = list(self._view.written())
            self.run.written = [WrittenFile(self._shown(f.path), f.size, f.action)
                                for f in written[:LISTED_FILES]]
            self.run.written_more = max(len(written) - LISTED_FILES, 0)
        finally:
            shutil.rmtree(self._root, ignore_errors=True)


    def _shown(self, path: str) -> str:
        """``path`` relative to the working directory, else to the script's directory,
        when below one of them (the report's form)."""
        shown = display_path(path)
        for directory in self._protected[1:]:
            if os.path.isabs(shown) and path.startswith(os.path.join(directory, "")):
                return os.path.relpath(path, directory)
        return shown


def _installers(link: Link) -> Iterator[Callable[[PatchSet], None]]:
    """The installing steps (each undone if a later one fails)."""
    opener = opening(builtins.open, link)
    io_opener = opener if io.open is builtins.open else opening(io.open, link)
    yield lambda p: p.patch(builtins, "open", opener)
    yield lambda p: p.patch(io, "open", io_opener)
    yield lambda p: p.patch(os, "open", os_open(os.open, link))
    for name in ("stat", "lstat", "access", "readlink", "listxattr", "getxattr"):
        yield _patching(os, name, reading, link)
    for name in ("chmod", "utime", "chown", "truncate", "setxattr", "removexattr"):
        yield _patching(os, name, changing, link)
    yield _patching(os, "mkdir", mkdir, link)
    for name in ("remove", "unlink", "rmdir"):
        yield _patching(os, name, removing, link)
    for name in ("rename", "replace"):
        yield _patching(os, name, renaming, link)
    yield _patching(os, "listdir", listdir, link)
    yield _patching(os, "scandir", scandir, link)
    yield _patching(shutil, "rmtree", rmtree, link)
    yield _patching(os, "chdir", chdir, link)
    yield _patching(os, "getcwd", getcwd, link)
    yield _patching(os, "getcwdb", getcwd, link)
    yield from _library_installers(link)


def _library_installers(link: Link) -> Iterator[Callable[[PatchSet], None]]:
    """torch's and numpy's functions that take a path (numpy only when imported)."""
    import torch

    for owner in (torch, torch.serialization):
        yield _patching(owner, "save", path_argument(1, "f", write=True), link)
        yield _patching(owner, "load", path_argument(0, "f", write=False), link)
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return
    for name, argument in (("save", "file"), ("savez", "file"), ("savez_compressed", "file"),
                           ("savetxt", "fname")):
        yield _patching(numpy, name, path_argument(0, argument, write=True), link)
    for name, argument in (("load", "file"), ("loadtxt", "fname"), ("genfromtxt", "fname")):
        yield _patching(numpy, name, path_argument(0, argument, write=False), link)


def _patching(owner: Any, name: str, make: Callable[[Wrapper, Link], Wrapper],
              link: Link) -> Callable[[PatchSet], None]:
    """The step patching ``owner.name`` with ``make(original, link)``, if it exists."""

    def step(patches: PatchSet) -> None:
        original = getattr(owner, name, None)
        if original is not None:
            patches.patch(owner, name, make(original, link))

    return step
