"""Durability and file-safety helpers shared by everything that writes files users rely on
(CSV rows, weights, sidecars).

Paths we write to may be planted: a ``NAME.part`` that is a symlink to a file elsewhere, or a
FIFO that blocks whoever opens it. :func:`open_regular` opens only a regular file, never through
a symlink and never blocking on a FIFO or device.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

from cover_engine.runtime.errors import NotRegularFile

__all__ = ["fsync_dir", "open_regular", "kind_of", "NotRegularFile"]

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
