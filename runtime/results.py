"""Per-file scores: how they are formed from score maps, and the crash-safe CSV they go to.

Scores are formed here, once, for every backend and both paths (CPU views, GPU pipeline): a
branch score is the mean of its score map, overall is semantic + technical + aesthetic
(upstream's ``fuse_results``); with several clips each score is averaged over the clips
(:func:`branch_scores`, :func:`file_score`). Raw scores are unbounded and may be negative, as
upstream's are.

Long runs (a dataset of 10,000 videos) must survive being killed: every row is flushed and
fsynced before the next file starts, so a crash loses at most the file in flight. The file is only
ever appended to; the one repair on reopening is cutting off an unterminated last line (a row
the crash tore in half), and that row's file is simply scored again. ``cover-run --csv`` and
``cover-eval`` share this format:

    name,semantic,technical,aesthetic,overall,frames,resolution,backend,colour,seconds[,extra...]

Scores are written with ``repr`` (shortest round-trip form), so the raw numbers are kept exactly.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np

from cover_engine.runtime.constants import BRANCHES, DEFAULT_COLOUR
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.durable import fsync_dir
from cover_engine.runtime.errors import InputError

__all__ = ["FileScore", "FileScorer", "branch_scores", "file_score", "SCORE_COLUMNS",
           "score_columns", "read_rows", "RowLog", "ScoreCsvWriter"]

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

    def to_dict(self) -> dict:
        """Plain fields, for JSON."""
        return asdict(self)

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


def read_rows(path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV written by :class:`RowLog`, ignoring a torn last line (read-only)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return _parse_lines(path, _decode(path, _complete_part(data)))


class RowLog:
    """An append-only CSV: each :meth:`append` is one line, flushed and fsynced before returning.

    Opening a file that already has content needs ``resume=True`` (nothing is ever overwritten);
    its header must match ``columns``, an unterminated last line left by a crash is cut off
    (``self.dropped`` holds those bytes), and its rows are available as ``self.rows``.
    Every record is one physical line, so values may not contain line breaks.
    """

    def __init__(self, path, columns: Sequence[str], *, resume: bool = False):
        self.path = Path(path)
        self.columns = tuple(columns)
        self.rows: list[dict[str, str]] = []
        self.dropped = b""
        existing = self.path.read_bytes() if self.path.is_file() else b""
        if existing and not resume:
            raise InputError(f"{self.path}: already holds results; resume it or write to another file")
        complete = _complete_part(existing)
        tail = existing[len(complete):]
        # Check everything before touching the file: it may not be ours at all.
        if complete:
            header, self.rows = _parse_lines(self.path, _decode(self.path, complete))
            if tuple(header) != self.columns:
                raise InputError(f"{self.path}: columns {','.join(header)} do not match "
                                 f"{','.join(self.columns)}; cannot resume into it")
        elif tail and not _format_line(self.columns).startswith(tail):
            raise InputError(f"{self.path}: not a results file of this kind; cannot resume into it")
        if tail:
            self.dropped = tail
            os.truncate(self.path, len(complete))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._file = open(self.path, "ab")
        if not complete:
            self._write(_format_line(self.columns))
        if created:
            fsync_dir(self.path.parent.resolve())

    def _write(self, line: bytes) -> None:
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, row: Mapping[str, object]) -> None:
        """Write one row (missing columns empty, unknown keys refused) and make it durable."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path}: unknown columns {sorted(unknown)}")
        values = ["" if row.get(c) is None else str(row[c]) for c in self.columns]
        for value in values:
            if "\n" in value or "\r" in value:
                raise InputError(f"{self.path}: cannot record {value!r}: line breaks are not allowed")
        self._write(_format_line(values))

    def close(self) -> None:
        self._file.close()

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

    def write(self, score: FileScore, name: Optional[str] = None, **extra: object) -> None:
        """Append ``score`` (keyed by ``name``, default its path) with values for the extra columns."""
        self.append({**score.to_row(name), **extra})
