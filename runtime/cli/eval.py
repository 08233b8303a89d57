"""``cover-eval``: score a labelled set and report SROCC/KROCC/PLCC/RMSE the way upstream does.

Examples::

    cover-eval --labels KoNViD/labels.txt --root datasets/KoNViD --plot kv1k.png --json kv1k.json
    cover-eval --labels mine.csv --name-column video --mos-column mos --root clips/ --resume

The work is :func:`cover_engine.runtime.eval.evaluate.evaluate`; this module parses options,
builds the scorer (only when a video needs scoring) and writes the reports.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from cover_engine.runtime.cli.common import command, cover_errors
from cover_engine.runtime.cli.options import (CheckedPath, csv_option, report_options,
                                              scorer_options, writable_output)
from cover_engine.runtime.durable import write_atomic
from cover_engine.runtime.eval.evaluate import (EVAL_EXTRA, evaluate, format_report, plot_fit,
                                                report_dict, write_rescaled)
from cover_engine.runtime.results import ResultsExist, ScoreCsvWriter
from cover_engine.runtime.eval.labels import FORMATS, check_distinct_files, read_labels
from cover_engine.runtime.results import FileScorer

__all__ = ["main", "default_csv", "build_scorer"]


def default_csv(labels: Path) -> Path:
    """``LABELS_STEM.cover.csv`` beside the label file, or in the current folder if that is read-only."""
    name = f"{labels.stem}.cover.csv"
    folder = labels.resolve().parent
    return folder / name if os.access(folder, os.W_OK) else Path.cwd() / name


def build_scorer(**options) -> FileScorer:
    """The real scoring pipeline (imported here so a finished run is re-reported without it)."""
    from cover_engine.runtime.scoring import make_scorer

    return make_scorer(**options)


@command()
@click.option("--labels", "labels_path", required=True,
              type=CheckedPath(exists=True, dir_okay=False, path_type=Path),
              help="Label file: upstream 'filename,a,t,mos' lines, or a CSV with a header.")
@click.option("--root", default=".", show_default=True, type=CheckedPath(file_okay=False, path_type=Path),
              help="Folder the label file's names are relative to.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Label format.")
@click.option("--name-column", help="CSV column with the file names (default: name, filename, file, ...).")
@click.option("--mos-column", help="CSV column with the MOS (default: mos, mosfull, score, label).")
@scorer_options
@csv_option("Per-video scores (default: LABELS_STEM.cover.csv beside the label file, "
            "or in the current folder if that one is read-only).")
@click.option("--resume", is_flag=True, help="Continue the run in --csv: skip the videos it already scored.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N labelled videos.")
@report_options(json_help="Write counts, metrics, fit parameters and problem videos as JSON.",
                plot_help="Write predicted-vs-MOS scatter with the fitted curve")
@click.option("--rescaled", "rescaled_path", type=CheckedPath(dir_okay=False, path_type=Path),
              callback=writable_output,
              help="Write raw scores with z-score, rank in [0, 1] and fixed 0-100 rescalings (CSV).")
def main(labels_path, root, fmt, name_column, mos_column, backend, engines, weights, clip_weights, config,
         random_weights, device, precision, torch_mode, seed, clips, colour, csv_path, resume,
         limit, json_path, plot_path,
         rescaled_path):
    """Score a labelled video set with COVER and report SROCC, KROCC, PLCC and RMSE."""
    with cover_errors():
        items = read_labels(labels_path, fmt, name_column=name_column, mos_column=mos_column)
        check_distinct_files(labels_path, items, root)
    items = items[:limit] if limit else items
    csv_path = csv_path or default_csv(labels_path)
    with cover_errors():  # the CSV is checked (and made) before any scoring: path, kind, header
        try:
            with ScoreCsvWriter(csv_path, EVAL_EXTRA, resume=resume) as existing:
                if existing.dropped:
                    click.echo(f"{csv_path}: dropped a partly written last row left by an "
                               "interrupted run", err=True)
        except ResultsExist as exc:  # a usage question, not a broken file
            raise click.UsageError(str(exc)) from None
    click.echo(f"scores -> {csv_path}", err=True)
    options = dict(backend=backend, engines=engines, weights=weights, clip_weights=clip_weights,
                   config=config, random_weights=random_weights, device=device, precision=precision,
                   torch_mode=torch_mode, seed=seed, clips=clips, colour=colour,
                   log=lambda msg: click.echo(msg, err=True))
    kept = f"; the rows already in {csv_path} are kept, continue with --resume"
    started = time.perf_counter()
    try:
        with cover_errors(hint=kept):
            run = evaluate(items, lambda: build_scorer(**options), csv_path, root=root, resume=resume)
    except OSError as exc:  # the CSV itself cannot be written; per-video errors are caught inside
        raise click.ClickException(f"{exc.filename or csv_path}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted" + kept) from None
    if run.dropped_partial_row:
        click.echo(f"{csv_path}: dropped a partly written last row left by an interrupted run", err=True)
    new = len(run.scores) - run.resumed
    if new:
        click.echo(f"scored {new} videos in {time.perf_counter() - started:.1f} s", err=True)
    if run.failed:
        click.echo(f"unreadable videos are listed in {run.errors_path}", err=True)

    metrics = run.metrics()
    click.echo(format_report(run, metrics))
    with cover_errors():  # checked at parse time; a disk that fills up since still gets one line
        if json_path is not None:
            report = {"labels": str(labels_path), "root": str(root), **report_dict(run, metrics)}
            write_atomic(json_path, (json.dumps(report, indent=1) + "\n").encode("utf-8"))
        if not run.scores:
            raise click.ClickException("no video was scored")
        if rescaled_path is not None:
            write_rescaled(run, rescaled_path)
        if plot_path is not None:
            plot_fit(run, metrics["overall"], plot_path)


if __name__ == "__main__":  # pragma: no cover
    main()
