"""``cover-run``: score videos and images with COVER.

Examples::

    cover-run clip.mp4
    cover-run videos/ "more/**/*.mkv" --json
    cover-run videos/ --csv scores.csv --backend onnxruntime --engines engines/cover-fp32
    cover-run clip.mp4 --calibration kv1k.cal.json --percentile-of kv1k.dist.json
    cover-run long.mp4 --segments 10 --timeline-plot long.png --json
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
from cover_engine.runtime.cli.options import (calibration_option, csv_option, percentile_option,
                                              quiet_option, scorer_options, timeline_options)
from cover_engine.runtime.constants import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cover_engine.runtime.folders import path_problem
from cover_engine.runtime.errors import OutputError
from cover_engine.runtime.results import FileScore

__all__ = ["main", "expand_inputs", "format_table", "media_in_folder", "segments_csv_path"]

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
    """A plain aligned table for a terminal (``mos``/``percentile`` columns when rows have them)."""
    extra = [c for c in ("mos", "percentile") if any(getattr(r, c) is not None for r in rows)]
    header = ("file",) + COLUMNS + tuple(extra) + ("frames", "resolution", "seconds")
    body = [(r.path,) + tuple(f"{getattr(r, c):.4f}" for c in COLUMNS)
            + tuple("" if getattr(r, c) is None else
                    f"{getattr(r, c):.{2 if c == 'percentile' else 4}f}" for c in extra)
            + (str(r.frames), r.resolution, f"{r.seconds:.2f}") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def segments_csv_path(csv_path: Path) -> Path:
    """Where ``--segments`` writes its per-window rows beside ``--csv``: ``NAME.segments.csv``."""
    return csv_path.with_name(csv_path.stem + ".segments.csv")


def _backend_of(scorer):
    """The inference backend under a scorer (the GPU scorer keeps it in its pipeline), or None."""
    backend = getattr(scorer, "backend", None)
    return backend if backend is not None else \
        getattr(getattr(scorer, "pipeline", None), "backend", None)


def _windows_many(backend, files, seconds, *, seed, clips, colour):
    """``(path, FileScore or exception)`` per file, each scored as the mean of its windows."""
    from cover_engine.runtime.timeline import score_segments

    for path in files:
        try:
            yield path, score_segments(backend, path, seconds, seed=seed, clips=clips,
                                       colour=colour)
        except Exception as exc:  # reported for this file; the batch goes on
            yield path, exc


@command()
@click.argument("paths", nargs=-1, required=True)
@scorer_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@csv_option("Also write rows to this CSV, row by row (appends to a matching header).")
@calibration_option("Add 'mos', the calibrated MOS, beside the raw scores (a file from "
                    "cover-eval --fit-calibration, for these weights). Default: the calibration "
                    "in the engine folder's manifest, if it has one.")
@percentile_option("Add 'percentile' (0-100): where each overall score stands in this reference "
                   "distribution (cover-eval --reference-distribution, for these weights).")
@timeline_options
@quiet_option
def main(paths, backend, engines, weights, clip_weights, config, device, precision, torch_mode,
         seed, clips, colour, as_json, csv_path, calibration, percentile_of, segments,
         timeline_plot, random_weights, head, quiet):
    """Score each video or image in PATHS (files, folders, globs) with COVER.

    Prints per-branch scores (semantic, technical, aesthetic) and their sum, the overall score.
    Scores are COVER's raw outputs: unbounded, and negative values are normal; --calibration
    adds a MOS on a labelled set's scale and --percentile-of a rank in a reference set, beside
    them. A file that cannot be read is reported and the batch goes on; the exit code is 1 if
    any file failed.
    """
    from cover_engine.runtime.eval.annotate import (Meaning, embedded_calibration,
                                                    read_meaning_files)
    from cover_engine.runtime.model_identity import identity_of_backend
    from cover_engine.runtime.results import RowLog, ScoreCsvWriter
    from cover_engine.runtime.scoring import make_scorer

    if timeline_plot is not None and segments is None:
        raise click.UsageError("--timeline-plot needs --segments SECONDS")
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    files, failures = expand_inputs(paths)
    if not files:  # nothing to score: say why per argument, without building a scorer
        for name, why in failures:
            click.echo(f"Error: {name}: {why}", err=True)
        sys.exit(1)
    writer = None
    with cover_errors():
        calibration_file, reference_file = read_meaning_files(calibration, percentile_of)
        embedded = embedded_calibration(backend, engines)
        extra = (("mos",) if calibration_file or embedded else ()) + \
            (("percentile",) if reference_file else ())
        # the CSVs first: a path that cannot take the rows is reported before a model is built
        writer = ScoreCsvWriter(csv_path, extra) if csv_path else None
        window_log = None
        try:
            if csv_path and segments is not None:
                from cover_engine.runtime.timeline import SEGMENT_COLUMNS

                window_log = RowLog(segments_csv_path(csv_path),
                                    SEGMENT_COLUMNS + (("mos",) if "mos" in extra else ()),
                                    resume=True)
            scorer = make_scorer(backend, engines=engines, weights=weights,
                                 clip_weights=clip_weights, device=device, precision=precision,
                                 torch_mode=torch_mode, seed=seed, clips=clips, config=config,
                                 random_weights=random_weights, head=head, log=log,
                                 colour=colour)
            model = _backend_of(scorer)
            meaning = None
            if extra:
                meaning = Meaning.of(calibration_file, reference_file, embedded,
                                     calibration_source=str(calibration),
                                     reference_source=str(percentile_of))
                meaning.check(identity_of_backend(model), seed=seed, clips=clips, colour=colour,
                              log=log)
        except BaseException:
            for out in (writer, window_log):
                if out is not None:
                    out.discard_if_unused()
                    out.close()
            raise
    if segments is not None and str(getattr(model, "name", "")).startswith("tensorrt"):
        log("cover-run: --segments decodes on the CPU and runs each window on the GPU engines")

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
        batch = scorer.score_many(files) if segments is None else \
            _windows_many(model, files, segments, seed=seed, clips=clips, colour=colour)
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
                if meaning is not None:
                    meaning.annotate(row)
                try:
                    if writer is not None:
                        writer.write(row, **(meaning.csv_values(row) if meaning else {}))
                    if window_log is not None:
                        from cover_engine.runtime.timeline import segment_rows

                        for window in segment_rows(row):
                            window_log.append(window)
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
        for out in (writer, window_log):
            if out is not None:
                out.close()
        close = getattr(scorer, "close", None)  # real scorers release their backend
        if close is not None:
            close()

    if rows and not as_json:
        click.echo(format_table(rows))
    if timeline_plot is not None and rows:
        from cover_engine.runtime.timeline_plot import plot_timeline

        with cover_errors():  # checked at parse time; a disk that fills up since: one line
            plot_timeline(rows, timeline_plot)
        log(f"timeline -> {timeline_plot}")
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
