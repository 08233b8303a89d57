"""Where ``cover-batch`` keeps results: durable parts while it runs, one whole Parquet file after.

``--out RESULTS.parquet`` owns a folder beside it, ``RESULTS.parquet.parts/``:

* Every batch of rows that comes back from the workers is appended to a part file (an Arrow IPC
  stream, ``part-<run>-<n>.arrows``) and fsynced before the next one is taken, so a crash,
  SIGKILL or Ctrl-C loses at most the batches still in flight. A crash can only tear the last
  message of a part; reading stops there and that batch's files are simply scored again.
* The final ``RESULTS.parquet`` (and ``--csv``) is written to a temporary name, fsynced and
  renamed into place, so it is always whole. Only then are the parts removed; if something
  dies in between, the next run finds the same rows twice and keeps one.
* A rerun reads the final file and the parts, one row per path (the newest wins), and skips a
  path whose content fingerprint still matches (``plan``). Rows of paths not named in this run
  are kept: the output accumulates.

An advisory lock on the parts folder keeps two runs from writing the same results.
"""
from __future__ import annotations

import fcntl
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

from cover_engine.runtime.batch.fingerprint import FINGERPRINT_KINDS, fingerprint
from cover_engine.runtime.batch.schema import RESULT_COLUMNS, require_pyarrow, result_schema
from cover_engine.runtime.durable import fsync_dir
from cover_engine.runtime.errors import CoverError, InputError

__all__ = ["ResultStore", "PartWriter", "Loaded", "plan", "dedupe"]

PARTS_SUFFIX = ".parts"
PART_GLOB = "part-*.arrows"
#: A part file is closed and a new one begun after this many rows (keeps files moderate).
ROWS_PER_PART = 50_000


@dataclass
class Loaded:
    """What an earlier run left: its rows (one per path) and the torn data it had to drop."""

    table: object  # pyarrow.Table with the result schema
    torn: list[str] = field(default_factory=list)  # "part: kept N batches, dropped the rest"
    parts: int = 0

    def done(self) -> dict[str, tuple[Optional[str], bool]]:
        """``path -> (fingerprint, failed)`` of every recorded row."""
        t = self.table
        return {p: (f, e is not None) for p, f, e in zip(t.column("path").to_pylist(),
                                                         t.column("fingerprint").to_pylist(),
                                                         t.column("error").to_pylist())}


def dedupe(table):
    """One row per path, the last one in table order winning; sorted by path."""
    pa = require_pyarrow()
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    indexed = table.append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    last = indexed.group_by("path", use_threads=False).aggregate([("__row", "max")])
    keep = table.take(last.column("__row_max"))
    return keep.take(pc.sort_indices(keep, sort_keys=[("path", "ascending")]))


class PartWriter:
    """Appends result tables to this run's part files, each batch durable before the next."""

    def __init__(self, parts_dir: Path, run: int, rows_per_part: int = ROWS_PER_PART):
        self.parts_dir = parts_dir
        self.run = run
        self.rows_per_part = rows_per_part
        self.schema = result_schema()
        self.rows = 0
        self._seq = 0
        self._file = None
        self._stream = None
        self._rows_in_part = 0

    def _open(self) -> None:
        pa = require_pyarrow()
        self._seq += 1
        path = self.parts_dir / f"part-{self.run:06d}-{self._seq:06d}.arrows"
        self._file = open(path, "xb")
        self._stream = pa.ipc.new_stream(self._file, self.schema)
        self._sync()
        fsync_dir(self.parts_dir)
        self._rows_in_part = 0

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, table) -> None:
        """Append ``table`` (result schema) and make it durable."""
        if table.num_rows == 0:
            return
        if self._stream is None or self._rows_in_part >= self.rows_per_part:
            self.close()
            self._open()
        self._stream.write_table(table.cast(self.schema))
        self._sync()
        self._rows_in_part += table.num_rows
        self.rows += table.num_rows

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # end-of-stream marker
            self._sync()
            self._file.close()
            self._stream = self._file = None


class ResultStore:
    """The results of one ``--out`` path: earlier rows, this run's parts, the final file."""

    def __init__(self, out, csv: Optional[Path] = None):
        self.out = Path(out).absolute()
        self.csv = Path(csv).absolute() if csv else None
        self.parts_dir = self.out.with_name(self.out.name + PARTS_SUFFIX)
        if self.out.is_dir():
            raise InputError(f"{self.out}: is a folder; --out names the Parquet file to write")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the results exclusively for this run (refuses at once if another run holds them).

        The lock is on the parts folder itself, and the holder removes the folder when it ends
        empty (every row in the final file). A run that locked a folder removed meanwhile sees
        that its inode is no longer the path's and locks the new one instead.
        """
        while True:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.parts_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CoverError(f"{self.out}: another cover-batch run is writing these results "
                                 f"(it holds {self.parts_dir})") from None
            try:
                same = os.stat(self.parts_dir).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            try:
                if not self.part_files():
                    self.parts_dir.rmdir()
            except OSError:
                pass  # not empty (someone's file) or already gone: leave it
            os.close(fd)

    def part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob(PART_GLOB)) if self.parts_dir.is_dir() else []

    def next_run(self) -> int:
        runs = [int(p.name.split("-")[1]) for p in self.part_files()]
        return max(runs, default=0) + 1

    def load(self) -> Loaded:
        """Rows of the final file, then of every part in order, deduplicated by path."""
        pa = require_pyarrow()
        tables = []
        schema = result_schema()
        if self.out.exists():
            tables.append(_read_final(self.out, schema))
        torn: list[str] = []
        parts = self.part_files()
        for part in parts:
            batches, note = _read_part(part, schema)
            if note:
                torn.append(note)
            if batches:
                tables.append(pa.Table.from_batches(batches, schema=schema))
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return Loaded(table=dedupe(table), torn=torn, parts=len(parts))

    def writer(self) -> PartWriter:
        return PartWriter(self.parts_dir, self.next_run())

    def finalize(self, table) -> None:
        """Write the final file(s) whole, then drop the parts they now contain."""
        import pyarrow.parquet as pq

        table = dedupe(table.cast(result_schema()))
        _atomic_write(self.out, lambda tmp: pq.write_table(table, tmp))
        if self.csv is not None:
            import pyarrow.csv as pcsv

            _atomic_write(self.csv, lambda tmp: pcsv.write_csv(table, tmp))
        for part in self.part_files():
            part.unlink()
        fsync_dir(self.parts_dir)


def _read_final(path: Path, schema):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())}); "
                         "move it away or choose another --out") from None
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise InputError(f"{path}: not a cover-batch results file (no column "
                         f"{', '.join(missing)}); move it away or choose another --out")
    try:
        return table.select(schema.names).cast(schema)
    except Exception as exc:
        raise InputError(f"{path}: columns have other types than cover-batch writes ({exc})") from None


def _read_part(path: Path, schema) -> tuple[list, Optional[str]]:
    """The complete batches of a part; a note when a torn tail (a crash) was left out."""
    pa = require_pyarrow()
    batches = []
    try:
        with pa.OSFile(str(path)) as f:
            reader = pa.ipc.open_stream(f)
            if not reader.schema.equals(schema):
                raise InputError(f"{path}: written with another schema; move the parts folder "
                                 "away or choose another --out")
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    return batches, None
    except InputError:
        raise
    except (OSError, pa.ArrowInvalid):
        return batches, f"{path.name}: kept {sum(b.num_rows for b in batches)} rows, " \
                        "dropped a torn tail (a run was killed)"


def _atomic_write(dest: Path, write) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)


def plan(inputs: Sequence[str], done: dict[str, tuple[Optional[str], bool]], *,
         retry_errors: bool = False, threads: int = 8) -> tuple[list[str], int]:
    """Split ``inputs`` into those to score and the count already scored (same content).

    A recorded path is skipped when its fingerprint, recomputed now with the recorded kind, is
    unchanged (a file that was unreadable then and is still unreadable counts as unchanged);
    failed rows are scored again only with ``retry_errors``.
    """
    def unchanged(path: str) -> bool:
        recorded, failed = done[path]
        if failed and retry_errors:
            return False
        kind = recorded.split(":", 1)[0] if recorded else "sampled"
        if kind not in FINGERPRINT_KINDS:
            return False
        try:
            now: Optional[str] = fingerprint(path, kind)
        except OSError:
            now = None
        return now == recorded

    known = [p for p in inputs if p in done]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # I/O bound
        same = dict(zip(known, pool.map(unchanged, known)))
    todo = [p for p in inputs if not same.get(p, False)]
    return todo, len(inputs) - len(todo)
