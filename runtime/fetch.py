"""Download, verify and locate COVER's two weight files (the command is ``cli/fetch.py``).

Where a weight file is looked for, first match wins:

1. a path given explicitly (a CLI option or ``resolve_weights(wf, explicit=...)``);
2. the environment variable named by ``WeightFile.env`` (``COVER_WEIGHTS``, ``COVER_CLIP_WEIGHTS``);
3. the cache folder, ``cache_dir() / wf.name``.

A location that was asked for but holds no file is an error; nothing falls through to the next.

Verification: hashing the 890 MB CLIP archive on every start would cost seconds, so a file is
hashed in full once, and a sidecar ``NAME.sha256`` is written beside it: ``sha256sum`` format
(``sha256sum -c`` reads it) plus a ``#`` comment line recording the file's size, modification
time, change time and inode at the moment it was hashed. Later checks are cheap: the sidecar is
trusted only if it names the expected digest and every recorded value still matches, so a file
replaced since (even one of the same size with its mtime set back) is hashed again. If the folder
is read-only the sidecar cannot be written and that full hash repeats each time.
``cover-fetch --check`` always hashes.

Trust model: the cache folder is the user's own and trusted (the sidecar is a speed-up within
it, not a signature); the weight files' *contents* are untrusted input and are never executed
(see ``cover_engine.export.weights``).

Downloads stream into ``NAME.part``, resume it with an HTTP Range request, hash while writing,
and only a verified file is fsynced and renamed to ``NAME``: an interrupted or corrupted download
never leaves a file under the final name, and an existing file is never deleted. Nothing is
written through a symlink or into a non-regular file: a ``.part`` that is a symlink, FIFO or
device is removed and replaced by a fresh regular file (``O_NOFOLLOW``), and the sidecar is
written to a freshly created temporary (``O_EXCL``) and renamed over the old one.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence, Union

from tqdm import tqdm

from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_HOME_ENV, COVER_WEIGHTS, WeightFile
from cover_engine.runtime.errors import WeightsError
from cover_engine.runtime.durable import NotRegularFile, fsync_dir, kind_of, open_regular
from cover_engine.runtime.hashing import sha256_file
from cover_engine.runtime.folders import folder_problem

#: The files ``cover-fetch`` manages, by the short names ``--only`` and ``--url`` accept.
FILES: dict[str, WeightFile] = {"cover": COVER_WEIGHTS, "clip": CLIP_WEIGHTS}

_CHUNK = 1 << 20
#: Attempts per URL; a failed attempt is retried (resumed) only if it wrote new bytes.
_ATTEMPTS_PER_URL = 5
_USER_AGENT = "cover-engine-fetch"

PathLike = Union[str, "os.PathLike[str]"]


class _TransferError(Exception):
    """A response that cannot be used: truncated body, or a Range answer for the wrong bytes."""


_RETRYABLE = (OSError, http.client.HTTPException, _TransferError, ValueError)  # ValueError: bad URL


def cache_dir() -> Path:
    """``$COVER_HOME``, else ``$XDG_CACHE_HOME/cover-engine``, else ``~/.cache/cover-engine``."""
    if os.environ.get(COVER_HOME_ENV):
        return Path(os.environ[COVER_HOME_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cover-engine"
    return Path.home() / ".cache" / "cover-engine"


def checked_cache_dir(*, write: bool = False) -> Path:
    """:func:`cache_dir`, refused in one line (WeightsError naming where it came from) when it
    cannot serve: a file, a symlink loop, a path through a file, or -- with ``write`` -- a folder
    that cannot be created or written into (checked by writing, so also as root)."""
    path = cache_dir()
    problem = folder_problem(path, write=write)
    if problem:
        source = f"${COVER_HOME_ENV}" if os.environ.get(COVER_HOME_ENV) else "the cache folder"
        raise WeightsError(f"{path}: {problem} ({source}, where weights and exported engines are "
                           f"kept; set {COVER_HOME_ENV} to a writable folder)")
    return path


def verify(path: PathLike, wf: WeightFile, *, full: bool = False) -> Optional[str]:
    """Why ``path`` is not a good copy of ``wf`` (one sentence naming the file), or None if it is.

    Cheap when a trusted sidecar exists (see the module docstring); ``full`` ignores the sidecar.
    A successful full hash records the sidecar; a failed one removes a stale sidecar.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return f"{path} does not exist"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is {kind_of(st.st_mode)}, not a weight file"
    size = st.st_size
    if wf.size is not None and size != wf.size:
        return (f"{path} has {size} bytes, expected {wf.size} "
                f"(an incomplete download or not {wf.name})")
    if not full and _sidecar_vouches(path, wf.sha256, st):
        return None
    digest = sha256_file(path)
    if digest != wf.sha256:
        try:
            _sidecar(path).unlink(missing_ok=True)
        except OSError:
            pass
        return f"{path} has sha256 {digest}, expected {wf.sha256} (corrupted or not {wf.name})"
    _write_sidecar(path, digest, st)  # the stat taken before hashing: a change since shows
    return None


def resolve_weights(wf: WeightFile, explicit: Optional[PathLike] = None, *,
                    official: bool = True) -> Path:
    """The verified path of ``wf``: ``explicit``, else ``$wf.env``, else the cache.

    Raises WeightsError naming where it looked and how to get the file. ``official=False`` is for
    a custom-size model (``--config``): its weights must be named explicitly or by env var, and
    only need to exist (the published checksums cannot apply to them).
    """
    if not official:
        named = explicit or (os.environ.get(wf.env) if wf.env else None)
        if not named:
            raise WeightsError(f"a custom --config needs its weights named ({wf.name}: "
                               f"--weights/--clip-weights or ${wf.env})")
        path = Path(named).expanduser().absolute()
        if not path.is_file():
            raise WeightsError(f"{path}: weight file not found")
        return path
    if explicit is not None:
        path, origin = Path(explicit), "given explicitly"
    elif wf.env and os.environ.get(wf.env):
        path, origin = Path(os.environ[wf.env]), f"from ${wf.env}"
    else:
        path, origin = checked_cache_dir() / wf.name, ""
    path = path.expanduser().absolute()
    if not path.is_file():
        if origin:
            raise WeightsError(f"{wf.name} not found at {path} ({origin})")
        env = f"${wf.env} (not set) and " if wf.env else ""
        raise WeightsError(
            f"{wf.name} not found: looked at {env}{path}. Run `cover-fetch` to download it, or "
            f"download {wf.urls[0]} and put it at {path}"
            + (f" (or set {wf.env} to an existing copy)" if wf.env else ""))
    problem = verify(path, wf)
    if problem:
        where = f" ({origin})" if origin else "; run `cover-fetch` to download a good copy"
        raise WeightsError(problem + where)
    return path


def download(wf: WeightFile, dest_dir: PathLike, *, urls: Optional[Sequence[str]] = None,
             progress: bool = True, timeout: float = 30.0) -> Path:
    """Make ``dest_dir / wf.name`` a verified copy of ``wf`` and return its path.

    A good file already there is kept without any request. Otherwise each URL (``urls``, default
    ``wf.urls``) is tried in turn; a partial ``NAME.part`` is resumed; ``timeout`` is per socket
    operation. If every URL fails, one WeightsError lists each URL with its failure and says where
    to put the file by hand.
    """
    dest_dir = Path(dest_dir).expanduser().absolute()
    dest = dest_dir / wf.name
    if verify(dest, wf) is None:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / (wf.name + ".part")
    failures: list[tuple[str, str]] = []
    for url in urls or wf.urls:
        failure = ""
        for _ in range(_ATTEMPTS_PER_URL):
            start = _size(part)
            try:
                digest = _transfer(url, part, wf, progress=progress, timeout=timeout)
            except _RETRYABLE as exc:
                failure = _describe(exc)
                if _size(part) > start:
                    continue  # it got further: resume from there
                break
            if digest == wf.sha256:
                try:
                    _install(part, dest, digest)
                except OSError as exc:
                    raise WeightsError(f"{dest}: cannot put the verified download there "
                                       f"({exc.strerror or exc}); it is kept at {part}") from None
                return dest
            part.unlink()
            failure = f"checksum mismatch: expected sha256 {wf.sha256}, got {digest}"
            if start == 0:
                break  # fresh bytes from this URL are wrong: try the next one
            # else the old partial file may be the bad part: retry this URL from scratch
        failures.append((url, failure))
    raise WeightsError(_failure_message(wf, dest, part, failures))


def _open_part(part: Path):
    """``part`` opened for reading and writing, created if absent; only ever a regular file.

    A ``.part`` that is anything else (a symlink to a file elsewhere, a FIFO, a device) was not
    written by us: the entry is removed (a symlink's target is untouched) and a fresh file made.
    """
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise WeightsError(f"{part} is a folder where the partial download goes; remove it")
        os.unlink(part)
    try:
        fd = open_regular(part, os.O_RDWR | os.O_CREAT)
    except NotRegularFile as exc:  # replaced by something else in between: refuse, never follow
        raise WeightsError(f"{part}: {exc.strerror}; not writing the download there") from None
    return os.fdopen(fd, "r+b")


def _transfer(url: str, part: Path, wf: WeightFile, *, progress: bool, timeout: float) -> str:
    """One request extending ``part`` (rewritten if the server ignores Range); its sha256."""
    with _open_part(part) as out:
        return _transfer_into(out, url, wf, progress=progress, timeout=timeout)


def _transfer_into(out, url: str, wf: WeightFile, *, progress: bool, timeout: float) -> str:
    offset = os.fstat(out.fileno()).st_size
    hasher = hashlib.sha256()
    while offset and (chunk := out.read(_CHUNK)):  # the bytes already there, from this handle
        hasher.update(chunk)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the part may already be whole
            return hasher.hexdigest()
        raise
    with response:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if not match or int(match.group(1)) != offset:
                raise _TransferError(f"asked for bytes from {offset}, got '{content_range}'")
        else:  # the server sent the whole file: start over
            offset, hasher = 0, hashlib.sha256()
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None else None
        received = 0
        out.seek(offset)
        out.truncate(offset)
        with tqdm(total=offset + length if length is not None else wf.size, initial=offset,
                  desc=wf.name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                  disable=not (progress and sys.stderr.isatty())) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if length is not None and received < length:  # urllib does not raise on a short body
        raise _TransferError(f"connection closed after {offset + received} of "
                             f"{offset + length} bytes")
    return hasher.hexdigest()


def _install(part: Path, dest: Path, digest: str) -> None:
    """Atomically give the verified ``part`` its final name, durably, and record its digest.

    ``os.replace`` renames the entry: a symlink or FIFO at ``dest`` is replaced, never written
    through."""
    os.replace(part, dest)
    fsync_dir(dest.parent)
    _write_sidecar(dest, digest, dest.stat())


def _failure_message(wf: WeightFile, dest: Path, part: Path,
                     failures: list[tuple[str, str]]) -> str:
    lines = [f"could not download {wf.name} ({wf.description}):"]
    lines += [f"  {url}: {reason}" for url, reason in failures]
    if part.exists():
        lines.append(f"The partial download is kept at {part}; run again to resume it.")
    lines.append(f"To install it by hand, download it from one of these URLs and put it at {dest} "
                 f"(sha256 {wf.sha256})"
                 + (f", or set {wf.env} to the path of an existing copy." if wf.env else "."))
    return "\n".join(lines)


def _describe(exc: BaseException) -> str:
    """A short reason for one URL's failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _size(path: Path) -> int:
    """Bytes of a regular file at ``path`` (not followed if a symlink); 0 for anything else."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


#: What the sidecar's comment line records, in order: a change to any of them means a re-hash.
_STAMP_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino")


def _stamp(st: os.stat_result) -> str:
    values = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return " ".join(f"{k}={v}" for k, v in zip(_STAMP_FIELDS, values))


def _sidecar_vouches(path: Path, sha256: str, st: os.stat_result) -> bool:
    """The sidecar (a regular file) names ``sha256`` and the file is still the one it hashed."""
    try:
        fd = open_regular(_sidecar(path), os.O_RDONLY)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        text = f.read(4096).decode("utf-8", "replace")
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].split():
        return False  # no stamp (an older sidecar, or one written by hand): hash again
    return lines[0].split()[0] == sha256 and lines[1] == f"# {_stamp(st)}"


def _write_sidecar(path: Path, digest: str, st: os.stat_result) -> None:
    """Record a verified digest with the file's stamp; best effort, since a read-only folder
    only costs a re-hash. Written to a new temporary (``O_EXCL``: never through a planted link)
    and renamed over the sidecar."""
    tmp = path.with_name(path.name + ".sha256.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{digest}  {path.name}\n# {_stamp(st)}\n")
        os.replace(tmp, _sidecar(path))
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
