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
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cover_engine.runtime.constants import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cover_engine.runtime.errors import InputError

FORMATS = ("auto", "upstream", "csv")
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


def _is_upstream_line(line: str) -> bool:
    fields = line.split(",")
    return len(fields) == 4 and all(_float(f) is not None for f in fields[1:])


def _read_upstream(path: Path, text: str) -> list[LabelItem]:
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        mos = _float(fields[-1]) if len(fields) == 4 else None
        if mos is None or not fields[0]:
            raise InputError(f"{path}:{lineno}: expected 'filename,a,t,mos', got {line.strip()!r}")
        items.append(LabelItem(fields[0], mos, lineno))
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


def _read_csv(path: Path, text: str, name_column: Optional[str],
              mos_column: Optional[str]) -> list[LabelItem]:
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    header = next(reader, None)
    if not header:
        raise InputError(f"{path}: empty label file")
    header = [h.strip() for h in header]
    name_col = _pick_column(path, header, name_column, NAME_COLUMNS, "name", "--name-column")
    mos_col = _pick_column(path, header, mos_column, MOS_COLUMNS, "MOS", "--mos-column")
    name_at, mos_at = header.index(name_col), header.index(mos_col)
    items = []
    for lineno, fields in enumerate(reader, start=2):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise InputError(f"{path}:{lineno}: {len(fields)} fields for {len(header)} columns")
        name, mos = fields[name_at].strip(), _float(fields[mos_at].strip())
        if not name or mos is None:
            raise InputError(f"{path}:{lineno}: need a name and a numeric {mos_col}, "
                             f"got {fields[name_at]!r}, {fields[mos_at]!r}")
        items.append(LabelItem(name, mos, lineno))
    return items


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
        first = next((line for line in text.splitlines() if line.strip()), "")
        fmt = "upstream" if _is_upstream_line(first) else "csv"
    if fmt == "upstream" and (name_column or mos_column):
        raise InputError(f"{path}: --name-column/--mos-column apply to CSV files with a header, "
                         "not to upstream 'filename,a,t,mos' files")
    items = (_read_upstream(path, text) if fmt == "upstream"
             else _read_csv(path, text, name_column, mos_column))
    if not items:
        raise InputError(f"{path}: no labelled files")
    seen: dict[str, int] = {}
    for item in items:
        if item.name in seen:
            raise InputError(f"{path}:{item.line}: {item.name!r} is already listed on line {seen[item.name]}")
        seen[item.name] = item.line
    return items


def locate(root, name: str) -> Optional[Path]:
    """The file ``name`` refers to under ``root``, or ``None`` if there is none."""
    path = Path(name) if Path(name).is_absolute() else Path(root) / name
    if path.is_file():
        return path
    if not path.suffix:
        for ext in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
            candidate = path.with_name(path.name + ext)
            if candidate.is_file():
                return candidate
    return None
