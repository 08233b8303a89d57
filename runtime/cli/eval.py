"""``cover-eval``: score a labelled set and report SROCC/KROCC/PLCC/RMSE the way upstream does.

Examples::

    cover-eval --labels KoNViD/labels.txt --root datasets/KoNViD --plot kv1k.png --json kv1k.json
    cover-eval --labels mine.csv --name-column video --mos-column mos --root clips/ --resume
    cover-eval --labels kv1k.txt --root KoNViD --fit-calibration kv1k.cal.json --resume
    cover-eval --labels other.txt --root other/ --calibration kv1k.cal.json
    cover-eval --root my-library/ --reference-distribution library.dist.json    # no labels

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
from cover_engine.runtime.cli.options import (CheckedPath, calibration_option, csv_option,
                                              label_options, report_options, scorer_options,
                                              writable_output)
from cover_engine.runtime.durable import write_atomic
from cover_engine.runtime.eval.evaluate import (EVAL_EXTRA, TARGETS, EvalRun, evaluate,
                                                format_report, plot_fit, report_dict,
                                                write_rescaled)
from cover_engine.runtime.eval.labels import LabelItem, check_distinct_files, read_labels
from cover_engine.runtime.results import ResultsExist, ScoreCsvWriter
from cover_engine.runtime.results import FileScorer

__all__ = ["main", "default_csv", "build_scorer"]


def default_csv(labels: Path) -> Path:
    """``LABELS_STEM.cover.csv`` beside the label file, or in the current folder if that is read-only."""
    name = f"{labels.stem}.cover.csv"
    folder = labels.resolve().parent
    return folder / name if os.access(folder, os.W_OK) else Path.cwd() / name


def unlabelled_items(root: Path) -> list[LabelItem]:
    """Every video and image under ``root`` (recursively), as items without a MOS."""
    from cover_engine.runtime.cli.run import expand_inputs

    files, _ = expand_inputs([str(root)])
    return [LabelItem(f.relative_to(root).as_posix(), float("nan"), 0) for f in files]


def _scale(ctx: click.Context, param: click.Parameter, value):
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give it as LOW,HIGH, e.g. 1,5") from None
    if not low < high:
        raise click.BadParameter(f"{value!r}: LOW must be below HIGH")
    return (low, high)


def build_scorer(**options) -> FileScorer:
    """The real scoring pipeline (imported here so a finished run is re-reported without it)."""
    from cover_engine.runtime.scoring import make_scorer

    return make_scorer(**options)


@command()
@label_options(required=False,
               labels_help="Label file: upstream 'filename,a,t,mos' lines, or a CSV with a "
                           "header. Without one (only with --reference-distribution), every "
                           "video and image under --root is scored.")
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
@click.option("--fit-calibration", "fit_path", type=CheckedPath(dir_okay=False, path_type=Path),
              callback=writable_output,
              help="Fit the 4-parameter logistic from raw scores to this set's MOS (overall and "
                   "per branch) and write it as a calibration file for --calibration.")
@click.option("--calibration-name", help="Name recorded in the calibration or distribution "
                                          "(default: the label file's or folder's name).")
@click.option("--mos-scale", callback=_scale, metavar="LOW,HIGH",
              help="Nominal MOS scale recorded in the calibration, e.g. 1,5 (default: the "
                   "narrowest common scale holding the set's MOS).")
@calibration_option("Also report PLCC/RMSE of this calibration's MOS predictions against the "
                    "labels, as they are (no refit).")
@click.option("--reference-distribution", "reference_path",
              type=CheckedPath(dir_okay=False, path_type=Path), callback=writable_output,
              help="Save the set's raw scores as a reference distribution for cover-run "
                   "--percentile-of (needs no MOS).")
def main(labels_path, root, fmt, name_column, mos_column, backend, engines, weights, clip_weights, config,
         random_weights, head, device, precision, torch_mode, seed, clips, colour, csv_path,
         resume, limit, json_path, plot_path, rescaled_path, fit_path, calibration_name,
         mos_scale, calibration, reference_path):
    """Score a labelled video set with COVER and report SROCC, KROCC, PLCC and RMSE; fit a
    calibration to its MOS, or save its score distribution for percentiles."""
    labelled = labels_path is not None
    if not labelled:
        if reference_path is None:
            raise click.UsageError("--labels is required (only --reference-distribution works "
                                   "without labels)")
        needs = [o for o, v in (("--fit-calibration", fit_path), ("--calibration", calibration),
                                ("--plot", plot_path), ("--rescaled", rescaled_path)) if v]
        if needs:
            raise click.UsageError(f"{', '.join(needs)} need MOS labels (--labels)")
        if not root.is_dir():
            raise click.UsageError(f"--root {root}: not a folder")
    model_options = dict(backend=backend, engines=engines, weights=weights,
                         clip_weights=clip_weights, config=config, random_weights=random_weights,
                         head=head)
    cal = identity = None
    if calibration or fit_path or reference_path:  # which model: known before any scoring
        from cover_engine.runtime.model_identity import identity_from_options

        with cover_errors():
            identity = identity_from_options(**model_options)
    if calibration is not None:  # refuse a calibration for other weights before scoring
        from cover_engine.runtime.eval.calibration import load_calibration

        with cover_errors():
            cal = load_calibration(calibration)
            cal.check(identity, source=str(calibration))
    with cover_errors():
        if labelled:
            items = read_labels(labels_path, fmt, name_column=name_column, mos_column=mos_column)
            check_distinct_files(labels_path, items, root)
        else:
            items = unlabelled_items(root)
    items = items[:limit] if limit else items
    csv_path = csv_path or (default_csv(labels_path) if labelled else
                            Path.cwd() / f"{root.resolve().name or 'videos'}.cover.csv")
    with cover_errors():  # the CSV is checked (and made) before any scoring: path, kind, header
        try:
            with ScoreCsvWriter(csv_path, EVAL_EXTRA, resume=resume) as existing:
                if existing.dropped:
                    click.echo(f"{csv_path}: dropped a partly written last row left by an "
                               "interrupted run", err=True)
        except ResultsExist as exc:  # a usage question, not a broken file
            raise click.UsageError(str(exc)) from None
    click.echo(f"scores -> {csv_path}", err=True)
    options = dict(model_options, device=device, precision=precision, torch_mode=torch_mode,
                   seed=seed, clips=clips, colour=colour,
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

    if not labelled:
        click.echo(f"scored {len(run.scores)} of {len(run.items)} videos ({run.resumed} from an "
                   f"earlier run; {len(run.failed)} unreadable)")
        with cover_errors():
            if json_path is not None:
                report = {"labels": None, "root": str(root),
                          **{k: v for k, v in report_dict(run, {}).items() if k != "metrics"}}
                write_atomic(json_path, (json.dumps(report, indent=1) + "\n").encode("utf-8"))
            if not run.scores:
                raise click.ClickException("no video was scored")
        _write_reference(run, reference_path, calibration_name or root.resolve().name,
                         str(root), identity, seed, clips, colour)
        return

    metrics = run.metrics()
    click.echo(format_report(run, metrics))
    calibrated = None
    if cal is not None and run.scores:
        from cover_engine.runtime.eval.calibration import calibrated_metrics

        calibrated = calibrated_metrics(cal, {t: run.values(t)[0] for t in TARGETS},
                                        run.values("overall")[1])
        click.echo(format_calibrated(cal, calibrated))
    with cover_errors():  # checked at parse time; a disk that fills up since still gets one line
        if json_path is not None:
            report = {"labels": str(labels_path), "root": str(root), **report_dict(run, metrics)}
            if calibrated is not None:
                report["calibrated"] = {"calibration": str(calibration), "name": cal.name,
                                        "metrics": calibrated}
            write_atomic(json_path, (json.dumps(report, indent=1) + "\n").encode("utf-8"))
        if not run.scores:
            raise click.ClickException("no video was scored")
        if rescaled_path is not None:
            write_rescaled(run, rescaled_path)
        if plot_path is not None:
            plot_fit(run, metrics["overall"], plot_path)
    if fit_path is not None:
        _write_calibration(run, fit_path, calibration_name or labels_path.stem, labels_path,
                           mos_scale, identity, seed, clips, colour)
    if reference_path is not None:
        _write_reference(run, reference_path, calibration_name or labels_path.stem,
                         str(labels_path), identity, seed, clips, colour)


def format_calibrated(cal, calibrated: dict) -> str:
    """The calibrated-scale lines of the report."""
    lines = [f"on the MOS scale of calibration {cal.name!r} (fitted on {cal.n} videos; no refit):",
             f"{'':10s} {'PLCC':>7s} {'RMSE':>9s}"]
    for target, m in calibrated.items():
        plcc = "n/a" if m["plcc"] is None else f"{m['plcc']:.4f}"
        rmse = "n/a" if m["rmse"] is None else f"{m['rmse']:.4f}"
        lines.append(f"{target:10s} {plcc:>7s} {rmse:>9s}")
    return "\n".join(lines)


def _sampling(seed, clips, colour) -> dict:
    return {"seed": seed, "clips": clips, "colour": colour}


def _write_calibration(run: EvalRun, path: Path, name: str, labels: Path, scale, identity,
                       seed, clips, colour) -> None:
    from cover_engine.runtime.eval.calibration import fit_calibration

    with cover_errors(hint=f"; no calibration written to {path}"):
        cal = fit_calibration({t: run.values(t)[0] for t in TARGETS}, run.values("overall")[1],
                              name=name, identity=identity,
                              sampling=_sampling(seed, clips, colour),
                              scale=scale, labels=labels.name, backend=",".join(run.backends))
        cal.save(path)
    fit = cal.fits["overall"]
    direction = "" if fit.b1 > fit.b2 else " (decreasing: higher raw scores map to lower " \
        "values; is this a DMOS scale?)"
    click.echo(f"calibration {name!r} -> {path}: {cal.n} videos, MOS scale "
               f"{cal.mos.scale_low:g}-{cal.mos.scale_high:g} ({cal.mos.scale_source}), fit RMSE "
               f"{fit.rmse:.4f}, PLCC {fit.plcc:.4f}{direction}", err=True)
    for target, why in cal.fit_errors.items():
        click.echo(f"calibration: no {target} fit ({why})", err=True)


def _write_reference(run: EvalRun, path: Path, name: str, source: str, identity, seed,
                     clips, colour) -> None:
    from cover_engine.runtime.eval.reference import build_reference

    with cover_errors(hint=f"; no reference distribution written to {path}"):
        scored = [item.name for item in run.scored]
        ref = build_reference({t: [getattr(run.scores[n], t) for n in scored] for t in TARGETS},
                              name=name, identity=identity,
                              sampling=_sampling(seed, clips, colour),
                              source=source, backend=",".join(run.backends))
        ref.save(path)
    click.echo(f"reference distribution {name!r} -> {path}: {ref.n} videos", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
