"""Labelled sets: which files to score and their MOS.

Two formats:

- ``upstream``: COVER's ``examplar_data_labels/*/labels.txt``, one ``filename,a,t,mos`` line per
  video (``a`` and ``t`` are unused metadata, often -1; spaces after commas are allowed).
- ``csv``: any CSV with a header row (comma, semicolon or tab separated), such as the datasets'
  own metadata files. The name and MOS columns are chosen by name; by default the first of
  :data:`NAME_COLUMNS` / :data:`MOS_COLUMNS` present (case-insensitive).

``auto`` picks ``upstream`` when the first line has four fields of which the last three are numbers.
Names are relative to a root folder (absolute names are kept). A name without an extension,
like KoNViD-1k's Flickr ids, also matches ``name.mp4`` and the other known video/image extensions.

Label files come from users and are untrusted, so reading them is strict: a MOS must be a finite
number (``nan``/``inf`` would poison every correlation silently), a file may be listed once only,
whatever the spelling (``v1.mp4``, ``./v1.mp4``, ``sub/../v1.mp4``), and CSV quoting follows
RFC 4180 -- quoted commas and line breaks inside a field are data, an unterminated or stray quote
is an error naming the line. Names may not hold line breaks or NUL: they key the rows of the
line-per-record score CSV.
"""
from __future__ import annotations

import csv
import io
import math
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cover_engine.runtime.constants import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cover_engine.runtime.errors import InputError

__all__ = ["FORMATS", "LabelItem", "read_labels", "locate", "name_key", "check_distinct_files"]

FORMATS = ("auto", "upstream", "csv")
#: Separators a CSV label file may use; the one that splits the header into most columns wins.
DELIMITERS = (",", ";", "\t")
#: Characters a labelled name may not contain (they cannot be one field of one CSV line).
FORBIDDEN_IN_NAMES = ("\n", "\r", "\x00")
#: Name columns tried in order when none is given (LSVQ: name, LIVE-VQC: File, KoNViD: flickr_id).
NAME_COLUMNS = ("name", "filename", "file", "video", "video_name", "path", "flickr_id")
#: MOS columns tried in order when none is given (YouTube-UGC: MOSFull). DMOS is never guessed:
#: it runs the other way.
MOS_COLUMNS = ("mos", "mosfull", "score", "label")


@dataclass(frozen=True)
class LabelItem:
    """One labelled file: its name as written in the label file (the key of result rows) and MOS."""

    name: str
    mos: float
    line: int = 0


def _float(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def _split_upstream(line: str) -> list[str]:
    """``filename,a,t,mos`` with the name allowed to hold commas (the last three fields never do)."""
    return [f.strip() for f in line.rsplit(",", 3)]


def _is_upstream_line(line: str) -> bool:
    fields = _split_upstream(line)
    return len(fields) == 4 and all(_float(f) is not None for f in fields[1:])


def _item(path: Path, lineno: int, name: str, mos_text: str, what: str) -> LabelItem:
    """One checked item: a usable name and a finite MOS, or InputError naming the line."""
    where = f"{path}:{lineno}"
    bad = [c for c in FORBIDDEN_IN_NAMES if c in name]
    if bad:
        raise InputError(f"{where}: name {name!r} holds a line break or NUL character; "
                         "such names cannot be keyed in the score CSV")
    mos = _float(mos_text)
    if not name or mos is None:
        raise InputError(f"{where}: need a name and a numeric {what}, got {name!r}, {mos_text!r}")
    if not math.isfinite(mos):
        raise InputError(f"{where}: {what} of {name!r} is {mos_text!r}, not a finite number")
    return LabelItem(name, mos, lineno)


def _read_upstream(path: Path, text: str) -> list[LabelItem]:
    items = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        fields = _split_upstream(line)
        if len(fields) != 4 or _float(fields[-1]) is None or not fields[0]:
            raise InputError(f"{path}:{lineno}: expected 'filename,a,t,mos', got {line.strip()!r}")
        if fields[0].startswith('"'):
            raise InputError(f"{path}:{lineno}: quoted name {fields[0]!r}: upstream "
                             "'filename,a,t,mos' files are not quoted (names may hold commas as "
                             "they are); use a CSV with a header row for quoting")
        items.append(_item(path, lineno, fields[0], fields[-1], "MOS"))
    return items


def _pick_column(path: Path, header: list[str], wanted: Optional[str], candidates: tuple[str, ...],
                 what: str, option: str) -> str:
    by_lower = {h.strip().lower(): h for h in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        raise InputError(f"{path}: no column {wanted!r}; columns are {', '.join(header)}")
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    raise InputError(f"{path}: no {what} column found among {', '.join(header)}; choose one with {option}")


def _records(path: Path, text: str, delimiter: str):
    """``(first line, fields)`` of each CSV record; quoted fields may span lines (strict RFC 4180:
    an unterminated quote or text after a closing quote is an InputError naming the line)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = ("a quote opened here is never closed" if "end of data" in str(exc)
                    else "quote a field whole, doubling quotes inside it" if "expected after" in str(exc)
                    else "not a text CSV file")
            raise InputError(f"{path}:{start}: malformed CSV record ({exc}; {hint})") from None
        yield start, fields
        start = reader.line_num + 1


def _delimiter(path: Path, text: str) -> str:
    """The separator that splits the header record into most columns (a header has no numbers,
    so unlike :class:`csv.Sniffer` this is not fooled by quoted commas in the rows)."""
    best, most = ",", 0
    for delimiter in DELIMITERS:
        try:
            header = next((f for _, f in _records(path, text, delimiter)
                           if any(x.strip() for x in f)), [])
        except InputError:
            continue
        if len(header) > most:
            best, most = delimiter, len(header)
    return best


def _read_csv(path: Path, text: str, name_column: Optional[str],
              mos_column: Optional[str]) -> list[LabelItem]:
    records = ((n, f) for n, f in _records(path, text, _delimiter(path, text))
               if any(x.strip() for x in f))
    header = next((f for _, f in records), None)
    if not header:
        raise InputError(f"{path}: empty label file")
    header = [h.strip() for h in header]
    name_col = _pick_column(path, header, name_column, NAME_COLUMNS, "name", "--name-column")
    mos_col = _pick_column(path, header, mos_column, MOS_COLUMNS, "MOS", "--mos-column")
    name_at, mos_at = header.index(name_col), header.index(mos_col)
    items = []
    for lineno, fields in records:
        if len(fields) != len(header):
            raise InputError(f"{path}:{lineno}: {len(fields)} fields for {len(header)} columns")
        items.append(_item(path, lineno, fields[name_at].strip(), fields[mos_at].strip(), mos_col))
    return items


def name_key(name: str) -> str:
    """The spelling-independent form of a labelled name: ``./a.mp4``, ``sub/../a.mp4``,
    ``a//b.mp4`` and ``a.mp4`` name one file whatever the root (purely lexical)."""
    return posixpath.normpath(name)


def _check_unique(path: Path, items: list[LabelItem]) -> None:
    seen: dict[str, LabelItem] = {}
    for item in items:
        first = seen.setdefault(name_key(item.name), item)
        if first is not item:
            same = "is" if first.name == item.name else f"names the same file as {first.name!r},"
            raise InputError(f"{path}:{item.line}: {item.name!r} {same} already listed on line "
                             f"{first.line}")


def check_distinct_files(path, items: Sequence[LabelItem], root) -> None:
    """No two labels locate the same file under ``root`` (``a.mp4`` and ``/root/a.mp4``, ``a`` and
    ``a.mp4``, symlinks, hard links): one video with two MOS would count twice in every metric.
    Names that do not locate a file are left to the run, which reports them as missing."""
    seen: dict[tuple[int, int], LabelItem] = {}
    for item in items:
        found = locate(root, item.name)
        if found is None:
            continue
        try:
            st = found.stat()
        except OSError:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), item)
        if first is not item:
            raise InputError(f"{path}:{item.line}: {item.name!r} names the same file as "
                             f"{first.name!r} on line {first.line} (both are {os.path.realpath(found)})")


def read_labels(path, fmt: str = "auto", *, name_column: Optional[str] = None,
                mos_column: Optional[str] = None) -> list[LabelItem]:
    """Parse a label file; :class:`InputError` naming the file and line on anything malformed."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown label format {fmt!r} (choose from {', '.join(FORMATS)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read label file ({exc})") from None
    if fmt == "auto":
        first = next((line for line in text.split("\n") if line.strip()), "")
        fmt = "upstream" if _is_upstream_line(first) else "csv"
    if fmt == "upstream" and (name_column or mos_column):
        raise InputError(f"{path}: --name-column/--mos-column apply to CSV files with a header, "
                         "not to upstream 'filename,a,t,mos' files")
    items = (_read_upstream(path, text) if fmt == "upstream"
             else _read_csv(path, text, name_column, mos_column))
    if not items:
        raise InputError(f"{path}: no labelled files")
    _check_unique(path, items)
    return items


def locate(root, name: str) -> Optional[Path]:
    """The file ``name`` refers to under ``root``, or ``None`` if there is none."""
    path = Path(name) if Path(name).is_absolute() else Path(root) / name
    if _present(path):
        return path
    if not path.suffix:
        for ext in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
            candidate = path.with_name(path.name + ext)
            if _present(candidate):
                return candidate
    return None


def _present(path: Path) -> bool:
    """Something other than a folder is there: a FIFO or device is then refused by the scorer
    for what it is, not listed as missing."""
    try:
        return path.exists() and not path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte, ...
        return False
