"""Whether a path a user named can serve, said in one sentence -- before any work starts.

A command that will write into a folder (the weight cache ``$COVER_HOME``, ``cover-export --out``)
should fail at once with the folder and the reason, not after minutes of work with an
``OSError`` traceback; a path argument that is a symlink loop should say so, not "does not
exist". Everything here only looks (``stat``) except :func:`folder_problem` with ``write=True``,
which creates and removes one empty probe file: permission bits do not tell (root ignores them,
read-only mounts and sysfs refuse anyway).
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

__all__ = ["path_problem", "folder_problem"]

PathLike = Union[str, os.PathLike]

_ERRNO_WORDS = {
    errno.ELOOP: "a symlink loop (too many levels of symbolic links)",
    errno.ENAMETOOLONG: "name too long for the file system",
    errno.EACCES: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _why(exc: OSError) -> str:
    return _ERRNO_WORDS.get(exc.errno, exc.strerror or str(exc))


def path_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot even be looked up (symlink loop, NUL byte, name too long, a file used
    as a folder, no permission), or None -- a path that simply does not exist is not a problem
    here; the caller knows whether it must exist."""
    try:
        os.stat(path)
    except ValueError:
        return "holds a NUL character"
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _why(exc)
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def folder_problem(path: PathLike, *, write: bool = False) -> Optional[str]:
    """Why ``path`` cannot be used as a folder (to read from, or with ``write`` to create and
    write into), in words to follow the path; None if it can."""
    path = Path(path)
    problem = path_problem(path)
    if problem:
        return problem
    if path.exists():
        if not path.is_dir():
            return "is a file, not a folder" if path.is_file() else "is not a folder"
        target = path
    else:
        target = _nearest_existing(path.absolute())
        if not target.is_dir():
            return f"cannot be created: {target} is a file, not a folder"
        if not write:
            return None  # nothing there yet: reading finds nothing, which the caller reports
    if not write:
        return None
    try:
        fd, probe = tempfile.mkstemp(prefix=".cover-write-probe-", dir=target)
    except OSError as exc:
        where = "" if target == path else f" ({target} does not let it be created)"
        return f"not writable: {_why(exc)}{where}"
    os.close(fd)
    os.unlink(probe)
    return None
