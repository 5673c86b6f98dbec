"""The replacements the scratch overlay installs (see :mod:`torchdoctor.scriptrun.overlay`).

Each wrapper maker takes the original function and the run's link to its
:class:`~torchdoctor.scriptrun.overlaypaths.ScratchView`; once the link is cut, the wrapper
calls the original with the caller's arguments. Paths the view leaves alone (file
descriptors, exempt paths) reach the original unchanged.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

from torchdoctor.scriptrun.overlaypaths import ScratchView, already_there, missing
from torchdoctor.scriptrun.patches import RunLink

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
Link = RunLink[ScratchView]
Wrapper = Callable[..., Any]


def chdir(original: Wrapper, link: Link) -> Wrapper:
    """``os.chdir``: into the real directory when it exists, else into the scratch one
    the script made (``os.getcwd()`` still names the real path, see :func:`getcwd`)."""

    @functools.wraps(original)
    def chdir(path: Any) -> None:
        view = link.get()
        real = view.real(path) if view is not None else None
        if view is None or real is None:
            return original(path)
        in_scratch, in_real = view.layers(real)
        if in_scratch and not in_real:
            return original(view.scratch(real))
        return original(view.passed(path) if in_real else view.for_read(path))

    return chdir


def getcwd(original: Wrapper, link: Link) -> Wrapper:
    """``os.getcwd``/``getcwdb``: the real path of a scratch directory the script went
    into, so that relative paths resolve (``os.path.abspath``) as the script meant."""

    @functools.wraps(original)
    def getcwd() -> Any:
        cwd = original()
        view = link.get()
        if view is None:
            return cwd
        shown = view.unscratch(os.fsdecode(cwd))
        return os.fsencode(shown) if isinstance(cwd, bytes) else shown

    return getcwd


def _with_dir_fd(path: Any, dir_fd: int | None) -> tuple[Any, int | None]:
    """``(path, dir_fd)`` with a name relative to ``dir_fd`` made absolute (through
    /proc/self/fd), so that the view can judge it; unchanged where that is not possible."""
    if dir_fd is None or not isinstance(path, (str, bytes, os.PathLike)):
        return path, dir_fd
    name = os.fsdecode(path)
    if os.path.isabs(name):
        return path, dir_fd
    try:
        base = os.readlink(f"/proc/self/fd/{dir_fd}")
    except OSError:  # no /proc (not Linux): the name stays relative to the descriptor
        return path, dir_fd
    return os.path.join(base, name), None


def opening(original: Wrapper, link: Link) -> Wrapper:
    """``open``: writing modes go to scratch, reads see scratch copies first."""

    @functools.wraps(original)
    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        view = link.get()
        if view is None or isinstance(file, int):
            return original(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return original(view.for_read(file), mode, *args, **kwargs)
        real = view.real(file)
        if real is not None and "x" in mode and view.exists(real):
            raise already_there(file)
        keep = "a" in mode or ("+" in mode and "w" not in mode)
        return original(view.for_write(file, keep), mode, *args, **kwargs)

    return open_


def os_open(original: Wrapper, link: Link) -> Wrapper:
    """``os.open``: flags that write go to scratch (O_EXCL and a missing file as the view
    says), read-only opens see scratch copies first."""

    @functools.wraps(original)
    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> Any:
        view = link.get()
        if view is None:
            return original(path, flags, mode, dir_fd=dir_fd)
        path, dir_fd = _with_dir_fd(path, dir_fd)
        real = view.real(path)
        if real is None:
            return original(path, flags, mode, dir_fd=dir_fd)
        if not flags & _WRITE_FLAGS:
            return original(view.for_read(path), flags, mode)
        exists = view.exists(real)
        if exists and flags & os.O_CREAT and flags & os.O_EXCL:
            raise already_there(path)
        if not exists and not flags & os.O_CREAT:
            raise missing(path)
        return original(view.for_write(path, not flags & os.O_TRUNC), flags, mode)

    return os_open


def reading(original: Wrapper, link: Link) -> Wrapper:
    """An ``os`` function that looks at ``path``: it sees the scratch copy first."""

    @functools.wraps(original)
    def reading(path: Any = None, *args: Any, **kwargs: Any) -> Any:
        view = link.get()
        if view is None:
            return original(path, *args, **kwargs) if path is not None else \
                original(*args, **kwargs)
        path, kwargs["dir_fd"] = _with_dir_fd(path, kwargs.get("dir_fd"))
        if kwargs["dir_fd"] is None:
            del kwargs["dir_fd"]
        return original(view.for_read(path), *args, **kwargs)

    return reading


def changing(original: Wrapper, link: Link) -> Wrapper:
    """An ``os`` function that changes ``path``'s metadata or size: it changes the
    scratch copy (copied from the real file first)."""

    @functools.wraps(original)
    def changing(path: Any, *args: Any, **kwargs: Any) -> Any:
        view = link.get()
        if view is None:
            return original(path, *args, **kwargs)
        path, kwargs["dir_fd"] = _with_dir_fd(path, kwargs.get("dir_fd"))
        if kwargs["dir_fd"] is None:
            del kwargs["dir_fd"]
        real = view.real(path)
        if real is None:
            return original(path, *args, **kwargs)
        if not view.exists(real):
            raise missing(path)
        if view.is_dir(real):
            view.materialize_dir(real)
            target = view.scratch(real)
        else:
            target = view.materialize(real)
        return original(target, *args, **kwargs)

    return changing


def mkdir(original: Wrapper, link: Link) -> Wrapper:
    """``os.mkdir`` (and so ``os.makedirs``, ``Path.mkdir``): the directory is made in
    scratch."""

    @functools.wraps(original)
    def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        view = link.get()
        if view is None:
            return original(path, mode, dir_fd=dir_fd)
        path, dir_fd = _with_dir_fd(path, dir_fd)
        real = view.real(path)
        if real is None:
            return original(path, mode, dir_fd=dir_fd)
        if view.exists(real):
            raise already_there(path)
        view.mirror_parent(real, path)
        return original(view.scratch(real), mode)

    return mkdir


def removing(original: Wrapper, link: Link) -> Wrapper:
    """``os.remove``/``unlink``/``rmdir``: the scratch copy is removed and the real path
    hidden; the user's file stays."""
    directories = original.__name__ == "rmdir"

    @functools.wraps(original)
    def remove(path: Any, *, dir_fd: int | None = None) -> None:
        view = link.get()
        if view is None:
            return original(path, dir_fd=dir_fd)
        path, dir_fd = _with_dir_fd(path, dir_fd)
        real = view.real(path)
        if real is None:
            return original(path, dir_fd=dir_fd)
        if not view.exists(real):
            raise missing(path)
        is_dir = view.is_dir(real) and not stat.S_ISLNK(os.lstat(path).st_mode)
        if is_dir != directories:
            code = errno.ENOTDIR if directories else errno.EISDIR
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        if directories and view.listing(real):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), os.fsdecode(path))
        scratch = view.scratch(real)
        if os.path.lexists(scratch):
            original(scratch)
        view.hide(real)

    return remove


def renaming(original: Wrapper, link: Link) -> Wrapper:
    """``os.rename``/``replace``: the scratch copy moves (the real source copied into
    scratch first, then hidden)."""

    @functools.wraps(original)
    def rename(src: Any, dst: Any, *, src_dir_fd: int | None = None,
               dst_dir_fd: int | None = None) -> None:
        view = link.get()
        if view is None:
            return original(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        src, src_dir_fd = _with_dir_fd(src, src_dir_fd)
        dst, dst_dir_fd = _with_dir_fd(dst, dst_dir_fd)
        src_real, dst_real = view.real(src), view.real(dst)
        if src_real is None and dst_real is None:
            return original(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        if src_real is not None and not view.exists(src_real):
            raise missing(src)
        source = view.materialize(src_real) if src_real is not None else src
        target = dst
        if dst_real is not None:
            view.mirror_parent(dst_real, dst)
            target = view.scratch(dst_real)
        original(source, target, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        if src_real is not None:
            view.hide(src_real)

    return rename


def listdir(original: Wrapper, link: Link) -> Wrapper:
    """``os.listdir``: the real names not removed, and the scratch ones."""

    @functools.wraps(original)
    def listdir(path: Any = ".") -> list[Any]:
        view = link.get()
        real = view.real(path) if view is not None else None
        if view is None or real is None:
            return original(path)
        if not view.is_dir(real):
            raise missing(path) if not view.exists(real) else \
                NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        names = view.listing(real)
        return [os.fsencode(n) for n in names] if isinstance(path, bytes) else names

    return listdir


def scandir(original: Wrapper, link: Link) -> Wrapper:
    """``os.scandir`` (``os.walk``, ``glob``): scratch entries, then the real ones."""

    @functools.wraps(original)
    def scandir(path: Any = ".") -> Any:
        view = link.get()
        real = view.real(path) if view is not None else None
        if view is None or real is None:
            return original(path)
        in_scratch, in_real = view.layers(real)
        if in_scratch and in_real:
            return _MergedScan(original(view.scratch(real)), original(view.passed(path)),
                               set(view.listing(real)))
        return original(view.scratch(real) if in_scratch else view.for_read(path))

    return scandir


class _MergedScan:
    """A ``scandir`` iterator over a scratch directory and the real one behind it
    (an iterator, as ``os.walk`` calls ``next()`` on it)."""

    def __init__(self, scratch: Any, real: Any, shown: set[str]) -> None:
        self._scans = [scratch, real]
        self._shown = shown
        self._entries = self._merged()

    def _merged(self) -> Iterator[Any]:
        seen: set[str] = set()
        for scan in self._scans:
            for entry in scan:
                if entry.name in self._shown and entry.name not in seen:
                    seen.add(entry.name)
                    yield entry
        self.close()

    def __iter__(self) -> _MergedScan:
        return self

    def __next__(self) -> Any:
        return next(self._entries)

    def close(self) -> None:
        """Close both scans."""
        for scan in self._scans:
            scan.close()

    def __enter__(self) -> _MergedScan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def rmtree(original: Wrapper, link: Link) -> Wrapper:
    """``shutil.rmtree``: the scratch tree goes, the real one is hidden."""

    @functools.wraps(original)
    def rmtree(path: Any, ignore_errors: bool = False, *args: Any, **kwargs: Any) -> None:
        view = link.get()
        if view is None:
            return original(path, ignore_errors, *args, **kwargs)
        path, dir_fd = _with_dir_fd(path, kwargs.pop("dir_fd", None))
        real = view.real(path)
        if real is None:
            return original(path, ignore_errors, *args, dir_fd=dir_fd, **kwargs)
        if not view.is_dir(real):
            if ignore_errors:
                return None
            raise missing(path) if not view.exists(real) else \
                NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        scratch = view.scratch(real)
        if os.path.lexists(scratch):
            original(scratch, ignore_errors, *args, **kwargs)
        view.hide(real)
        return None

    return rmtree


def path_argument(index: int, name: str, *, write: bool) -> Callable[[Wrapper, Link], Wrapper]:
    """A wrapper maker for a function whose argument ``index``/``name`` may be a path
    (``torch.save(obj, f)``, ``np.load(file)``): the path is redirected, a file object is
    left alone."""

    def make(original: Wrapper, link: Link) -> Wrapper:
        @functools.wraps(original)
        def with_path(*args: Any, **kwargs: Any) -> Any:
            view = link.get()
            if view is None:
                return original(*args, **kwargs)
            redirect = view.for_write if write else view.for_read
            if len(args) > index:
                args = (*args[:index], redirect(args[index]), *args[index + 1:])
            elif name in kwargs:
                kwargs[name] = redirect(kwargs[name])
            return original(*args, **kwargs)

        return with_path

    return make
