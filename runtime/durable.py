"""Durability and file-safety helpers shared by everything that writes files users rely on
(CSV rows, weights, sidecars).

Paths we write to may be planted: a ``NAME.part`` that is a symlink to a file elsewhere, or a
FIFO that blocks whoever opens it. :func:`open_regular` opens only a regular file, never through
a symlink and never blocking on a FIFO or device.

Reports are checked before the work that produces them (:func:`check_output_file`: a missing or
unwritable folder is found in a second, not after an hour of scoring) and written whole or not
at all (:func:`write_atomic`). :func:`write_all` writes every byte or raises, so callers can cut
a half-written record back off.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Union

from cover_engine.runtime.errors import NotRegularFile, OutputError

__all__ = ["fsync_dir", "open_regular", "kind_of", "NotRegularFile", "check_output_file",
           "write_atomic", "write_all", "reason"]

PathLike = Union[str, "os.PathLike[str]"]


def kind_of(mode: int) -> str:
    """A few words for what a non-regular file is, for messages."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that succeeds only on a regular file: the last component is not followed if it
    is a symlink (``O_NOFOLLOW``), a FIFO or device does not block the call (``O_NONBLOCK``,
    cleared again on success), and anything but a regular file raises :class:`NotRegularFile`."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        try:
            st = os.lstat(path)
        except OSError:
            raise exc from None
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(exc.errno, f"{kind_of(st.st_mode)}, not a regular file",
                                 str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(0, f"{kind_of(st.st_mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_dir(directory: Path) -> None:
    """Make a new or renamed directory entry durable (POSIX; a no-op where a folder can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def reason(exc: OSError) -> str:
    """``strerror`` of an OS error ("No space left on device"), for one-line messages."""
    if exc.errno == errno.EFBIG:
        return "File too large, over the file size limit set by ulimit -f"
    return exc.strerror or str(exc)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (``os.write`` may write part of it: a full disk, a size limit)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - POSIX raises instead
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[written:]


def check_output_file(path: PathLike, what: str = "") -> None:
    """Raise :class:`OutputError` (one line naming ``path``) unless ``path`` can be written:
    its folder exists and takes new files, and the path is absent or a writable regular file.

    The check is real, not ``os.access``: a file is opened for appending (nothing is written),
    a folder gets a temporary file created and removed, so a read-only mount or a root-owned
    folder is found as the write itself would find it.
    """
    label = f"{what}: " if what else ""
    path = Path(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # the folder checks below say which part
        st = None
    except OSError as exc:
        raise OutputError(f"{label}{path}: cannot be written ({reason(exc)})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{label}{path}: is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{label}{path}: is {kind_of(st.st_mode)}, not a file")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as exc:
            raise OutputError(f"{label}{path}: cannot be written ({reason(exc)})") from None
        return
    folder = path.parent if str(path.parent) else Path(".")
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{label}{path}: {blocker} is a file, not a folder")
    if not folder.exists():
        raise OutputError(f"{label}{path}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cover-write-check-", dir=folder)
    except OSError as exc:
        raise OutputError(f"{label}{path}: cannot create files in {folder} ({reason(exc)})") \
            from None
    os.close(fd)
    os.unlink(probe)


def write_atomic(path: PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole, or leave it as it was: a temporary file beside it
    (created exclusively, never through a link) is written, synced and renamed over it.
    Raises :class:`OutputError` naming ``path`` and the cause."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({reason(exc)})") from None
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OutputError(f"{path}: cannot be written ({reason(exc)})") from None
    fsync_dir(folder)
