"""Per-file scores: how they are formed from score maps, and the crash-safe CSV they go to.

Scores are formed here, once, for every backend and both paths (CPU views, GPU pipeline): a
branch score is the mean of its score map, overall is semantic + technical + aesthetic
(upstream's ``fuse_results``); with several clips each score is averaged over the clips
(:func:`branch_scores`, :func:`file_score`). Raw scores are unbounded and may be negative, as
upstream's are.

Long runs (a dataset of 10,000 videos) must survive being killed: every row is flushed and
fsynced before the next file starts, so a crash loses at most the file in flight. The file is only
ever appended to; the one repair on reopening is cutting off an unterminated last line (a row
the crash tore in half; that row's file is simply scored again), while a whole last row that
only lacks its newline (a file saved by an editor) is kept. A failed write is cut back off, so
the file always ends with a whole row; processes sharing a CSV take turns under ``flock``. ``cover-run --csv`` and
``cover-eval`` share this format:

    name,semantic,technical,aesthetic,overall,frames,resolution,backend,colour,seconds[,extra...]

Scores are written with ``repr`` (shortest round-trip form), so the raw numbers are kept exactly.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

import numpy as np

from cover_engine.runtime.constants import BRANCHES, DEFAULT_COLOUR
from cover_engine.runtime.durable import fsync_dir, kind_of, reason, write_all
from cover_engine.runtime.errors import InputError, OutputError

__all__ = ["FileScore", "FileScorer", "branch_scores", "file_score", "SCORE_COLUMNS",
           "score_columns", "read_rows", "RowLog", "ScoreCsvWriter", "ResultsExist"]

#: Columns of every score CSV, in order; callers may append extra columns (``cover-eval``: mos).
SCORE_COLUMNS: tuple[str, ...] = (
    "name", "semantic", "technical", "aesthetic", "overall",
    "frames", "resolution", "backend", "colour", "seconds",
)


@dataclass
class FileScore:
    """COVER's scores for one file. Raw model outputs: unbounded, may be negative."""

    path: str
    semantic: float
    technical: float
    aesthetic: float
    overall: float
    frames: int
    resolution: str  # "WxH"
    backend: str
    seconds: float
    colour: str = DEFAULT_COLOUR  # YUV -> RGB conversion used (constants.COLOUR_MODES)
    #: Optional additions, present in JSON only when set (``to_dict`` leaves out None):
    #: ``mos``, the calibrated prediction (``--calibration``); ``percentile`` of the overall
    #: score in a reference set (``--percentile-of``); ``segments``, one dict per time window
    #: (``--segments``, whose window mean the scores above then are).
    mos: Optional[float] = None
    percentile: Optional[float] = None
    segments: Optional[list[dict[str, Any]]] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Plain fields, for JSON (optional additions only when set)."""
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in OPTIONAL_FIELDS}

    def to_row(self, name: Optional[str] = None) -> dict[str, str]:
        """The CSV row; ``name`` (default: the path) is the key a resumed run matches on."""
        return {
            "name": self.path if name is None else name,
            "semantic": repr(float(self.semantic)),
            "technical": repr(float(self.technical)),
            "aesthetic": repr(float(self.aesthetic)),
            "overall": repr(float(self.overall)),
            "frames": str(int(self.frames)),
            "resolution": self.resolution,
            "backend": self.backend,
            "colour": self.colour,
            "seconds": f"{self.seconds:.4f}",
        }

    @classmethod
    def from_row(cls, row: Mapping[str, str], path: Optional[str] = None) -> "FileScore":
        """Inverse of :meth:`to_row` (``path`` defaults to the row's name)."""
        return cls(
            path=row["name"] if path is None else path,
            semantic=float(row["semantic"]),
            technical=float(row["technical"]),
            aesthetic=float(row["aesthetic"]),
            overall=float(row["overall"]),
            frames=int(row["frames"]),
            resolution=row["resolution"],
            backend=row["backend"],
            seconds=float(row["seconds"]),
            colour=row["colour"],
        )


class FileScorer(Protocol):
    """Anything that scores a file: the CPU-view :class:`~cover_engine.runtime.scoring.Scorer`,
    the :class:`~cover_engine.runtime.gpu.pipeline.GpuPipeline`, a test's fake.

    Both real scorers also have ``score_many(paths)`` (``(path, FileScore or exception)`` in
    order, a failure never stopping the batch), ``close()`` and ``with`` support.
    """

    name: str

    def score(self, path) -> FileScore: ...


def branch_scores(maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per batch item: each branch's mean score and the overall sum, as float64 arrays ``(B,)``."""
    scores = {b: maps[b].astype(np.float64).reshape(maps[b].shape[0], -1).mean(axis=1)
              for b in BRANCHES}
    scores["overall"] = scores["semantic"] + scores["technical"] + scores["aesthetic"]
    return scores


def file_score(path, maps: Mapping[str, np.ndarray], info, backend: str,
               started: float, colour: str = DEFAULT_COLOUR) -> FileScore:
    """The :class:`FileScore` of one file from its score maps (clip scores averaged); ``info``
    is the file's :class:`~cover_engine.runtime.media.decode.MediaInfo`, ``started`` the
    ``time.perf_counter()`` reading when its scoring began, ``colour`` the conversion used.

    A NaN or infinite score is never reported: the file fails with :class:`InputError` (the
    batch goes on), whatever made the model overflow (the input, or weights at their limits).
    """
    mean = {k: float(v.mean()) for k, v in branch_scores(maps).items()}
    bad = [f"{k} = {v}" for k, v in mean.items() if not math.isfinite(v)]
    if bad:
        raise InputError(f"{path}: the model gave a non-finite score ({', '.join(bad)}); "
                         "not reported")
    return FileScore(path=str(path), semantic=mean["semantic"], technical=mean["technical"],
                     aesthetic=mean["aesthetic"], overall=mean["overall"],
                     frames=int(info.num_frames), resolution=f"{info.width}x{info.height}",
                     backend=backend, seconds=time.perf_counter() - started, colour=colour)


#: FileScore fields left out of JSON when unset (and never part of :data:`SCORE_COLUMNS`).
OPTIONAL_FIELDS: tuple[str, ...] = ("mos", "percentile", "segments")


def score_columns(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """:data:`SCORE_COLUMNS` followed by ``extra``."""
    return SCORE_COLUMNS + tuple(extra)


def _format_line(values: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode("utf-8")


def _parse_lines(path: Path, text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of complete lines ``text`` (every record is one physical line)."""
    lines = text.split("\n")[:-1]  # text ends with a newline; other separators are data
    if not lines:
        return [], []
    header = next(csv.reader([lines[0]]))
    rows = []
    for lineno, fields in enumerate(csv.reader(lines[1:]), start=2):
        if len(fields) != len(header):
            raise InputError(f"{path}:{lineno}: malformed row ({len(fields)} fields for "
                             f"{len(header)} columns); fix or remove that line")
        rows.append(dict(zip(header, fields)))
    return header, rows


def _complete_part(data: bytes) -> bytes:
    """``data`` up to and including its last newline: a crash can only tear the last line."""
    return data[: data.rfind(b"\n") + 1]


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 CSV file") from None


def _whole_row(tail: bytes, header: Sequence[str],
               row_ok: Optional[Callable[[dict[str, str]], bool]] = None) -> Optional[dict[str, str]]:
    """The last line ``tail`` (no final newline) as a row, if it is a whole one: every column
    there, the last one not empty, and ``row_ok`` agreeing. A row torn inside a field has fewer
    fields (or an empty last one) and is not whole; a file saved without its final newline is."""
    try:
        text = tail.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not header or "\r" in text or text.count('"') % 2:
        return None
    fields = next(csv.reader([text]), [])
    if len(fields) != len(header) or not fields[-1]:
        return None
    row = dict(zip(header, fields))
    return row if row_ok is None or row_ok(row) else None


def read_rows(path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV written by :class:`RowLog` (read-only): a torn last line is
    ignored, a whole last row without its final newline is kept."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    complete = _complete_part(data)
    header, rows = _parse_lines(path, _decode(path, complete))
    last = _whole_row(data[len(complete):], header) if data[len(complete):] else None
    return header, rows + ([last] if last is not None else [])


class ResultsExist(OutputError):
    """The CSV already holds rows and was not opened to be continued (``resume=False``)."""


@contextlib.contextmanager
def _locked(fd: int):
    """An exclusive ``flock`` on the open CSV while its end is read or written: two processes
    creating one CSV write one header, and rows from several never interleave."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class RowLog:
    """An append-only CSV: each :meth:`append` is one line, written whole and fsynced before
    returning.

    Opening a file that already has content needs ``resume=True`` (nothing is ever overwritten);
    its header must match ``columns``; an unterminated last line left by a crash is cut off
    (``self.dropped`` holds those bytes) unless it is a whole row that only lacks its final
    newline, which is kept; its rows are available as ``self.rows``. Every record is one
    physical line, so values may not contain line breaks.

    Everything about the file is checked when it is opened, before any work is done: a path
    whose folder cannot be made, a folder, FIFO or device, a file of another kind, no permission
    or no space for the header: :class:`OutputError` naming the path and the cause. A write that
    fails later (disk full, ``ulimit -f``) is cut back off, so the file ends with the last whole
    row, and raises :class:`OutputError`. The end of the file is only read or written under an
    exclusive ``flock``, so processes sharing one CSV never write two headers or mix rows.
    """

    def __init__(self, path, columns: Sequence[str], *, resume: bool = False):
        self.path = Path(path)
        self.columns = tuple(columns)
        self.rows: list[dict[str, str]] = []
        self.dropped = b""
        self.created = False
        self._header = _format_line(self.columns)
        self._fd: Optional[int] = None
        self._open()
        try:
            with _locked(self._fd):
                self._adopt(resume)
        except BaseException:
            self.close()
            raise
        if self.created:
            fsync_dir(self.path.parent.absolute())

    def _fail(self, exc: OSError, doing: str = "cannot write") -> OutputError:
        return OutputError(f"{self.path}: {doing} ({reason(exc)})")

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocker = next((p for p in (self.path.parent, *self.path.parent.parents)
                            if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                raise OutputError(f"{self.path}: {blocker} is a file, not a folder") from None
            raise OutputError(f"{self.path}: cannot create its folder {self.path.parent} "
                              f"({reason(exc)})") from None
        existed = os.path.lexists(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            try:
                st = os.stat(self.path)
            except OSError:
                st = None
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise OutputError(f"{self.path}: is {kind_of(st.st_mode)}, not a file") from None
            raise self._fail(exc, "cannot open for writing") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO opened for reading and writing, a device
            os.close(fd)
            raise OutputError(f"{self.path}: is {kind_of(st.st_mode)}, not a file")
        os.set_blocking(fd, True)
        self._fd = fd
        self.created = not existed

    def _row_ok(self, row: dict[str, str]) -> bool:
        """Whether a last row without its final newline holds sensible values (subclasses
        check types)."""
        return True

    def _adopt(self, resume: bool) -> None:
        """Check what the file holds and make it end with a whole line (under the lock)."""
        try:
            existing = _read_fd(self._fd)
        except OSError as exc:
            raise self._fail(exc, "cannot read") from None
        complete = _complete_part(existing)
        tail = existing[len(complete):]
        # Check everything before touching the file: it may not be ours at all.
        try:
            if complete:
                header, self.rows = _parse_lines(self.path, _decode(self.path, complete))
                if tuple(header) != self.columns:
                    raise OutputError(f"{self.path}: columns {','.join(header)} do not match "
                                      f"{','.join(self.columns)}; cannot resume into it")
            elif tail and not self._header.startswith(tail):
                raise OutputError(f"{self.path}: not a results file of this kind; cannot resume "
                                  "into it")
        except InputError as exc:  # malformed rows, not UTF-8: the file is not ours to extend
            raise OutputError(str(exc)) from None
        if existing not in (b"", self._header) and not resume:  # a bare header holds no results
            raise ResultsExist(f"{self.path}: already holds results; continue it (--resume) or "
                               "write to another file")
        whole = _whole_row(tail, self.columns, self._row_ok) if complete and tail else None
        try:
            if whole is not None:  # saved without its final newline: keep it, end its line
                self.rows.append(whole)
                self._write(b"\n")
            elif tail:
                self.dropped = tail
                os.ftruncate(self._fd, len(complete))
            if not complete:
                self._write(self._header)
        except OSError as exc:
            raise self._fail(exc) from None

    def _write(self, line: bytes) -> None:
        """Append ``line`` whole and sync it, or cut the file back to where it ended."""
        end = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, end)
            except OSError:
                pass
            raise

    def append(self, row: Mapping[str, object]) -> None:
        """Write one row (missing columns empty, unknown keys refused) and make it durable.

        Raises :class:`OutputError` when it cannot be written (the file still ends with the
        previous whole row)."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path}: unknown columns {sorted(unknown)}")
        values = ["" if row.get(c) is None else str(row[c]) for c in self.columns]
        for value in values:
            if "\n" in value or "\r" in value:
                raise InputError(f"{self.path}: cannot record {value!r}: line breaks are not allowed")
        if self._fd is None:
            raise OutputError(f"{self.path}: is closed")
        with _locked(self._fd):
            try:
                self._write(_format_line(values))
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot write ({reason(exc)})") from None

    def discard_if_unused(self) -> None:
        """Remove the file again if this object created it and it holds only the header (the
        run it was opened for never started)."""
        if self._fd is None or not self.created:
            return
        with _locked(self._fd):
            try:
                if os.fstat(self._fd).st_size == len(self._header):
                    os.unlink(self.path)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RowLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ScoreCsvWriter(RowLog):
    """The score CSV of ``cover-run --csv`` and ``cover-eval``: :data:`SCORE_COLUMNS` + ``extra``.

    By default an existing file with the same header is continued (``resume=True``); pass
    ``resume=False`` to refuse any file that already holds rows.
    """

    def __init__(self, path, extra: Iterable[str] = (), *, resume: bool = True):
        super().__init__(path, score_columns(extra), resume=resume)

    def _row_ok(self, row: dict[str, str]) -> bool:
        try:
            FileScore.from_row(row)
        except (KeyError, ValueError):
            return False
        return True

    def write(self, score: FileScore, name: Optional[str] = None, **extra: object) -> None:
        """Append ``score`` (keyed by ``name``, default its path) with values for the extra columns."""
        self.append({**score.to_row(name), **extra})
