"""The file view of a script-mode run: the real file system with a scratch layer on top.

A real path ``/home/u/proj/model.pt`` has its scratch copy at
``<root>/home/u/proj/model.pt``. While the script runs (see
:mod:`torchdoctor.scriptrun.overlay`):

* what it writes, creates or changes goes to the scratch copy (an appended or
  read-write file is copied there first), never to the real path;
* what it reads is the scratch copy when there is one, else the real file;
* what it deletes or renames away is *hidden*: the real path (and everything below it)
  reads as missing from then on, while the real file stays untouched on disk. A
  directory made again over a hidden one shows only what was made in it since.

Exempt paths (see :data:`EXEMPT_SYSTEM` and :func:`exempt_prefixes`) are used as they
are: device and process files, the scratch root itself, the caches tools keep for the
next run (torch hub weights, matplotlib's font cache), which a plain ``python train.py``
would keep too, and the temporary directory outside the protected directories (the
working directory and the script's): temporary files are the program's own scratch
space, and their names are often handed to code that opens them by itself (a socket
bound in C, a file a C library reads), which would not find a scratch copy.

The functions here use the real ``os`` functions, bound when this module is imported
(before any run patches them).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

from torchdoctor.findings import WrittenFile

#: device, process and runtime files: writing there is not writing the user's files
EXEMPT_SYSTEM = ("/dev/", "/proc/", "/sys/", "/run/")

_lstat = os.lstat
_stat = os.stat
_mkdir = os.mkdir
_listdir = os.listdir
_getcwd = os.getcwd
_chmod = os.chmod
_real_open = open


def exempt_prefixes() -> tuple[str, ...]:
    """Where the run writes for real: system files, the caches of the user's tools, and
    multiprocessing's directories.

    Caches are shared by every program that uses the tool and are rebuilt when missing;
    sending them to scratch would only make every check re-download or re-build them.
    multiprocessing binds its sockets by name in C (``multiprocessing.util.get_temp_dir``),
    where a scratch copy of the directory would not be found.
    """
    home = os.path.expanduser("~")
    caches = [os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"),
              os.path.join(home, ".config", "matplotlib")]
    caches += [os.environ[name] for name in ("TORCH_HOME", "MPLCONFIGDIR", "HF_HOME")
               if os.environ.get(name)]
    return (*EXEMPT_SYSTEM, *(os.path.join(os.path.abspath(c), "") for c in caches),
            os.path.join(tempfile.gettempdir(), "pymp-"))


def missing(path: Any) -> FileNotFoundError:
    """The error a missing ``path`` raises, naming the path the script gave."""
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), _shown(path))


def already_there(path: Any) -> FileExistsError:
    """The error an existing ``path`` raises where it must not exist."""
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), _shown(path))


def _shown(path: Any) -> str:
    return os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)


def _exists(path: str) -> bool:
    try:
        _lstat(path)
    except (OSError, ValueError):  # missing, or a name the OS refuses: not there
        return False
    return True


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(_stat(path).st_mode)
    except (OSError, ValueError):  # missing, or a name the OS refuses: no directory
        return False


class ScratchView:
    """The layered view of one run: where each path the script names really is."""

    def __init__(self, root: str, exempt: tuple[str, ...] = (),
                 protected: tuple[str, ...] = ()) -> None:
        self.root = os.path.abspath(root)
        self._exempt = (os.path.join(self.root, ""), *exempt)
        self._temporary = os.path.join(os.path.abspath(tempfile.gettempdir()), "")
        self._protected = tuple(os.path.join(os.path.abspath(p), "") for p in protected)
        self._hidden: set[str] = set()
        #: the user's paths the script deleted or renamed away, in order (kept on disk)
        self.removed: dict[str, None] = {}

    # -- mapping -----------------------------------------------------------------
    def real(self, path: Any) -> str | None:
        """The absolute path ``path`` names, or None when the view leaves it alone (a
        file descriptor, or an exempt path)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None
        absolute = os.path.abspath(os.fsdecode(path))
        if os.path.join(absolute, "").startswith(self._exempt):
            return None
        if absolute.startswith(self._temporary) and \
                not os.path.join(absolute, "").startswith(self._protected):
            return None  # a temporary file, not in the user's project
        return absolute

    def unscratch(self, path: str) -> str:
        """The real path whose scratch copy is ``path`` (``path`` itself when it is not
        in scratch): what ``os.getcwd()`` says inside a directory the script made."""
        if path == self.root:
            return os.sep
        if path.startswith(os.path.join(self.root, "")):
            return os.sep + os.path.relpath(path, self.root)
        return path

    def scratch(self, real: str) -> str:
        """Where the scratch copy of the absolute path ``real`` lives."""
        return os.path.join(self.root, real.lstrip(os.sep))

    def _visible(self, real: str) -> bool:
        """Whether the real ``real`` shows through (neither it nor a parent is hidden)."""
        if not self._hidden:
            return True
        path = real
        while True:
            if path in self._hidden:
                return False
            parent = os.path.dirname(path)
            if parent == path:
                return True
            path = parent

    def exists(self, real: str) -> bool:
        """Whether ``real`` exists in the view."""
        return _exists(self.scratch(real)) or (self._visible(real) and _exists(real))

    def is_dir(self, real: str) -> bool:
        """Whether ``real`` is a directory in the view."""
        scratch = self.scratch(real)
        if _exists(scratch):
            return _is_dir(scratch)
        return self._visible(real) and _is_dir(real)

    def layers(self, real: str) -> tuple[bool, bool]:
        """Whether directory ``real`` has a scratch directory, and whether the real
        directory shows through."""
        return _is_dir(self.scratch(real)), self._visible(real) and _is_dir(real)

    def shows_real(self, real: str) -> bool:
        """Whether the view shows the real ``real`` (it exists, has no scratch copy and
        is not hidden)."""
        return not _exists(self.scratch(real)) and self._visible(real) and _exists(real)

    # -- what the replacements ask -------------------------------------------------
    def for_read(self, path: Any) -> Any:
        """The path to read for ``path``: its scratch copy if any, else ``path`` itself.
        Raises FileNotFoundError for a path the script removed."""
        real = self.real(path)
        if real is None:
            return self.passed(path)
        scratch = self.scratch(real)
        if _exists(scratch):
            return _same_type(scratch, path)
        if not self._visible(real):
            raise missing(path)
        return self.passed(path)

    def passed(self, path: Any) -> Any:
        """``path`` as the original function must get it: a relative path made absolute
        while the process's working directory is a scratch one (the script went into a
        directory it made), where the original would resolve it inside scratch."""
        if not isinstance(path, (str, bytes, os.PathLike)) or os.path.isabs(path) or \
                not os.path.join(_getcwd(), "").startswith(os.path.join(self.root, "")):
            return path
        return _same_type(os.path.abspath(os.fsdecode(path)), path)

    def for_write(self, path: Any, keep_content: bool = False) -> Any:
        """The path to write for ``path``: its scratch copy, made ready (its directory
        mirrored; the real file copied in first when ``keep_content``). Raises
        FileNotFoundError when the directory does not exist in the view."""
        real = self.real(path)
        if real is None:
            return self.passed(path)
        if self.is_dir(real):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), _shown(path))
        scratch = self.scratch(real)
        if not _exists(scratch):
            self.mirror_parent(real, path)
            if keep_content and self.shows_real(real) and not _is_dir(real):
                _copy_file(real, scratch)
        return _same_type(scratch, path)

    def mirror_parent(self, real: str, path: Any) -> None:
        """Make the scratch directory that ``real`` goes in (its real parent exists, or
        the script made it); FileNotFoundError naming ``path`` if it exists nowhere."""
        parent = os.path.dirname(real)
        if not self.is_dir(parent):
            raise missing(path)
        self.materialize_dir(parent)

    def materialize_dir(self, real: str) -> None:
        """Make the scratch directories for ``real`` (itself and its parents) that are
        missing, as real directories show them."""
        scratch = self.scratch(real)
        if _is_dir(scratch):
            return
        parent = os.path.dirname(real)
        if parent != real:
            self.materialize_dir(parent)
        if not _exists(scratch):
            _mkdir(scratch)

    def materialize(self, real: str) -> str:
        """The scratch copy of the existing ``real``, copied from the real file or
        directory tree first if there is none yet (a rename moves it in scratch)."""
        scratch = self.scratch(real)
        if not _exists(scratch):
            self.materialize_dir(os.path.dirname(real))
            if _is_dir(real):
                shutil.copytree(real, scratch, symlinks=True)
            else:
                _copy_file(real, scratch)
        return scratch

    def hide(self, real: str) -> None:
        """``real`` was removed by the script: from now on it reads as missing (the real
        file is not touched)."""
        if self._visible(real) and _exists(real):
            self.removed.setdefault(real, None)
        self._hidden.add(real)

    def listing(self, real: str) -> list[str]:
        """The names in directory ``real`` as the view shows them."""
        names: dict[str, None] = {}
        scratch = self.scratch(real)
        if _is_dir(scratch):
            names.update(dict.fromkeys(_listdir(scratch)))
        if self._visible(real) and _is_dir(real):
            names.update(dict.fromkeys(n for n in _listdir(real)
                                       if self._visible(os.path.join(real, n))))
        return list(names)

    # -- the summary ---------------------------------------------------------------
    def written(self) -> Iterator[WrittenFile]:
        """Files the script left in scratch (what it would have written), then the
        user's paths it removed, as :class:`WrittenFile` records with absolute paths."""
        for directory, dirs, files in os.walk(self.root):
            dirs.sort()
            relative = os.path.relpath(directory, self.root)
            real_dir = os.sep if relative == os.curdir else os.sep + relative
            for name in sorted(files):
                size = _lstat(os.path.join(directory, name)).st_size
                yield WrittenFile(os.path.join(real_dir, name), size, "written")
        for real in self.removed:
            yield WrittenFile(real, None, "removed")


def _same_type(path: str, like: Any) -> Any:
    """``path`` as bytes when the script gave bytes (os functions answer in kind)."""
    return os.fsencode(path) if isinstance(like, bytes) else path


def _copy_file(source: str, target: str) -> None:
    with _real_open(source, "rb") as src, _real_open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    _chmod(target, stat.S_IMODE(_stat(source).st_mode))
