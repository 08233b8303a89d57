"""``cover-run``: score videos and images with COVER.

Examples::

    cover-run clip.mp4
    cover-run videos/ "more/**/*.mkv" --json
    cover-run videos/ --csv scores.csv --backend onnxruntime --engines engines/cover-fp32
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Iterable

import click

from cover_engine.runtime.cli.common import command, cover_errors, one_line
from cover_engine.runtime.cli.options import csv_option, quiet_option, scorer_options
from cover_engine.runtime.constants import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cover_engine.runtime.folders import path_problem
from cover_engine.runtime.errors import OutputError
from cover_engine.runtime.results import FileScore

__all__ = ["main", "expand_inputs", "format_table", "media_in_folder"]

MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
COLUMNS = ("semantic", "technical", "aesthetic", "overall")


def expand_inputs(args: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders searched recursively by extension, globs expanded.

    Returns the files in a stable order (duplicates removed) and ``(argument, error)`` pairs for
    arguments that matched nothing, so that a batch reports them without stopping.
    """
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for arg in args:
        path = Path(arg)
        problem = path_problem(path)  # a symlink loop, a NUL byte: not even "missing"
        if problem:
            missing.append((arg, problem))
        elif path.is_dir():
            found, unreadable = media_in_folder(path)
            missing.extend(unreadable)
            if not found and not unreadable:
                missing.append((arg, "folder holds no video or image files"))
            files.extend(found)
        elif path.exists() or not glob.has_magic(arg):
            files.append(path)  # a missing plain path is reported by the scorer, per file
        else:
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not found:
                missing.append((arg, "pattern matched no files"))
            files.extend(found)
    seen: set[str] = set()  # os.path.realpath: Path.resolve raises on a symlink loop in a folder
    unique = [f for f in files
              if not (os.path.realpath(f) in seen or seen.add(os.path.realpath(f)))]
    return unique, missing


def media_in_folder(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Entries with a media extension under ``folder`` (symlinked folders not followed), sorted,
    and ``(folder, error)`` for each folder that could not be listed.

    Anything with a media extension that is not a folder is kept (a FIFO or a dangling link named
    ``x.mp4`` is then reported by the scorer for what it is, not silently left out)."""
    found: list[Path] = []
    unreadable: list[tuple[str, str]] = []

    def onerror(exc: OSError) -> None:
        unreadable.append((str(exc.filename or folder),
                           f"{exc.filename or folder}: cannot list folder ({exc.strerror or exc})"))

    for root, dirs, names in os.walk(folder, onerror=onerror):
        dirs.sort()
        for name in names:
            if Path(name).suffix.lower() in MEDIA_EXTENSIONS:
                found.append(Path(root) / name)
    return sorted(found), unreadable


def format_table(rows: list[FileScore]) -> str:
    """A plain aligned table for a terminal."""
    header = ("file",) + COLUMNS + ("frames", "resolution", "seconds")
    body = [(r.path,) + tuple(f"{getattr(r, c):.4f}" for c in COLUMNS)
            + (str(r.frames), r.resolution, f"{r.seconds:.2f}") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


@command()
@click.argument("paths", nargs=-1, required=True)
@scorer_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@csv_option("Also write rows to this CSV, row by row (appends to a matching header).")
@quiet_option
def main(paths, backend, engines, weights, clip_weights, config, device, precision, torch_mode,
         seed, clips, colour, as_json, csv_path, random_weights, quiet):
    """Score each video or image in PATHS (files, folders, globs) with COVER.

    Prints per-branch scores (semantic, technical, aesthetic) and their sum, the overall score.
    Scores are COVER's raw outputs: unbounded, and negative values are normal. A file that
    cannot be read is reported and the batch goes on; the exit code is 1 if any file failed.
    """
    from cover_engine.runtime.results import ScoreCsvWriter
    from cover_engine.runtime.scoring import make_scorer

    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    files, failures = expand_inputs(paths)
    if not files:  # nothing to score: say why per argument, without building a scorer
        for name, why in failures:
            click.echo(f"Error: {name}: {why}", err=True)
        sys.exit(1)
    writer = None
    with cover_errors():
        # the CSV first: a path that cannot take the rows is reported before a model is built
        writer = ScoreCsvWriter(csv_path) if csv_path else None
        try:
            scorer = make_scorer(backend, engines=engines, weights=weights,
                                 clip_weights=clip_weights, device=device, precision=precision,
                                 torch_mode=torch_mode, seed=seed, clips=clips, config=config,
                                 random_weights=random_weights, log=log, colour=colour)
        except BaseException:
            if writer is not None:
                writer.discard_if_unused()
                writer.close()
            raise

    rows: list[FileScore] = []
    stopped = None
    progress = None
    if len(files) > 1 and not quiet:
        from tqdm import tqdm

        progress = tqdm(total=len(files), unit="file", file=sys.stderr, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())
    try:
        # score_many: on the GPU path the next file is decoded while one is inferred; one bad
        # file never stops the batch (its exception comes back in its place)
        batch = scorer.score_many(files)
        for path, row in batch:
            if progress is not None:
                progress.set_postfix_str(Path(path).name[-40:])
            if isinstance(row, Exception):
                failures.append((str(path), one_line(row)))
                why = failures[-1][1]
                note = f"cover-run: skipped: {why}" if str(path) in why else \
                    f"cover-run: skipped {path}: {why}"
                progress.write(note, file=sys.stderr) if progress is not None else log(note)
            else:
                if writer is not None:
                    try:
                        writer.write(row)
                    except OutputError as exc:  # no place for more rows: stop, keep what is there
                        stopped = exc
                        break
                rows.append(row)
                if as_json:
                    click.echo(json.dumps(row.to_dict()))
            if progress is not None:
                progress.update(1)
    finally:
        if stopped is not None and hasattr(batch, "close"):
            batch.close()
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
        close = getattr(scorer, "close", None)  # real scorers release their backend
        if close is not None:
            close()

    if rows and not as_json:
        click.echo(format_table(rows))
    if failures:
        click.echo(f"cover-run: {len(failures)} failed, {len(rows)} scored:", err=True)
        for name, why in failures:  # messages usually name the file already
            click.echo(f"  {why}" if name in why else f"  {name}: {why}", err=True)
    if stopped is not None:
        raise click.ClickException(f"{one_line(stopped)}; stopped: the {len(rows)} rows "
                                   "before are kept, the remaining files were not recorded")
    if failures:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
