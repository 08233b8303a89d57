"""``cover-eval``: score a labelled set and report SROCC/KROCC/PLCC/RMSE the way upstream does.

Scores go to a per-video CSV as they are produced (see :mod:`.results`), so an interrupted run
is continued with ``--resume`` and loses at most the video in flight. Missing and unreadable
videos are listed, not fatal. Metrics follow COVER_SPEC.md section 4 (:mod:`.metrics`), for the
overall score and each branch.

:func:`evaluate` does the work with any object that has ``score(path) -> FileScore``; the click
command only parses options, builds the scorer and writes the reports.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence, Union

import click
import numpy as np

from cover_engine.runtime.cli.run import scorer_options
from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.errors import CoverError, InputError
from cover_engine.runtime.eval.labels import FORMATS, LabelItem, locate, read_labels
from cover_engine.runtime.eval.metrics import Metrics, compute_metrics, rank_unit, to_percent, zscore
from cover_engine.runtime.results import FileScore, RowLog, ScoreCsvWriter, score_columns

#: Extra columns of the per-video CSV: the label's MOS is kept beside the scores.
EVAL_EXTRA = ("mos",)
EVAL_COLUMNS = score_columns(EVAL_EXTRA)
#: Columns of the side file that lists videos that could not be scored.
ERROR_COLUMNS = ("name", "error")
#: Metrics are reported for these, in this order.
TARGETS = ("overall",) + BRANCHES
#: Stop after this many videos in a row fail with unexpected (non-input) errors: that is a broken
#: setup, not a broken dataset. The run can be resumed once it is fixed.
MAX_CONSECUTIVE_ERRORS = 20


class Scorer(Protocol):
    def score(self, path) -> FileScore: ...


@dataclass
class EvalRun:
    """Outcome of :func:`evaluate`: the scores of the labelled set and what could not be scored."""

    items: list[LabelItem]
    scores: dict[str, FileScore]
    csv_path: Path
    errors_path: Path
    resumed: int = 0
    missing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    dropped_partial_row: bool = False

    @property
    def scored(self) -> list[LabelItem]:
        """Labelled items that have scores, in label-file order."""
        return [item for item in self.items if item.name in self.scores]

    def values(self, target: str) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, MOS) for ``target`` (``overall`` or a branch) over the scored items."""
        scored = self.scored
        pred = np.array([getattr(self.scores[i.name], target) for i in scored], dtype=np.float64)
        return pred, np.array([i.mos for i in scored], dtype=np.float64)

    def metrics(self) -> dict[str, Metrics]:
        return {target: compute_metrics(*self.values(target)) for target in TARGETS}

    @property
    def backends(self) -> list[str]:
        return sorted({s.backend for s in self.scores.values()})


def errors_path_for(csv_path: Path) -> Path:
    """Where the unreadable videos of ``csv_path``'s run are listed: ``NAME.errors.csv`` beside it."""
    return csv_path.with_name(csv_path.stem + ".errors.csv")


def evaluate(items: Sequence[LabelItem], scorer: Union[Scorer, Callable[[], Scorer]], csv_path,
             *, root=".", resume: bool = False, progress: Optional[bool] = None) -> EvalRun:
    """Score every labelled item not yet in ``csv_path``, appending one durable row per video.

    ``scorer`` is a scorer or a zero-argument factory for one, called only when some video needs
    scoring (so re-reporting a finished run never loads a model). A video whose file is absent is
    listed in ``missing``; one the scorer rejects with :class:`InputError`, or that fails with an
    unexpected error, is listed in ``failed`` and in ``NAME.errors.csv``; neither stops the run,
    and both are tried again on resume. Other :class:`CoverError` (weights, engines) are fatal.
    """
    from tqdm import tqdm

    csv_path = Path(csv_path)
    errors_path = errors_path_for(csv_path)
    log = ScoreCsvWriter(csv_path, EVAL_EXTRA, resume=resume)
    if not resume and errors_path.exists():
        errors_path.unlink()  # a stale list from an earlier, unrelated run
    run = EvalRun(list(items), {}, csv_path, errors_path, dropped_partial_row=bool(log.dropped))
    labelled = {item.name for item in run.items}
    for row in log.rows:
        if row["name"] in labelled:
            run.scores[row["name"]] = FileScore.from_row(row)
    run.resumed = len(run.scores)
    errors_log: Optional[RowLog] = None
    consecutive = 0
    try:
        quiet = None if progress is None else not progress  # None: a bar only on a terminal
        bar = tqdm(run.items, desc="cover-eval", unit="video", disable=quiet)
        for item in bar:
            if item.name in run.scores:
                continue
            path = locate(root, item.name)
            if path is None:
                run.missing.append(item.name)
                continue
            if not hasattr(scorer, "score"):
                scorer = scorer()
            try:
                score = scorer.score(path)
                consecutive = 0
            except InputError as exc:
                consecutive = 0
                reason = str(exc).removeprefix(f"{path}: ")  # the name is listed beside it
            except CoverError:
                raise
            except Exception as exc:  # one pathological file must not end a 10,000-video run
                reason = f"{type(exc).__name__}: {exc}"
                consecutive += 1
                if consecutive >= MAX_CONSECUTIVE_ERRORS:
                    raise CoverError(f"{consecutive} videos in a row failed, the last ({item.name}) with "
                                     f"{reason}; stopping, the setup looks broken") from exc
            else:
                log.write(score, item.name, mos=repr(item.mos))
                run.scores[item.name] = score
                continue
            reason = " ".join(reason.split())  # one line, whatever the decoder said
            run.failed.append((item.name, reason))
            if errors_log is None:
                errors_log = RowLog(errors_path, ERROR_COLUMNS, resume=True)
            errors_log.append({"name": item.name, "error": reason})
            bar.set_postfix(failed=len(run.failed), missing=len(run.missing))
    finally:
        log.close()
        if errors_log is not None:
            errors_log.close()
    return run


def rescaled_rows(run: EvalRun) -> list[dict[str, object]]:
    """Raw scores with their set-relative (z-score, rank in [0, 1]) and fixed 0-100 rescalings."""
    scored = run.scored
    columns: dict[str, np.ndarray] = {}
    for target in TARGETS:
        pred, _ = run.values(target)
        columns[target] = pred
        columns[f"{target}_z"] = zscore(pred)
        columns[f"{target}_rank"] = rank_unit(pred)
    columns["overall_100"] = to_percent(columns["overall"])
    return [{"name": item.name, "mos": item.mos, **{k: float(v[i]) for k, v in columns.items()}}
            for i, item in enumerate(scored)]


def write_rescaled(run: EvalRun, path) -> None:
    """Write :func:`rescaled_rows` as CSV (atomically: it is rebuilt from scratch each time)."""
    import csv

    path = Path(path)
    rows = rescaled_rows(run)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def report_dict(run: EvalRun, metrics: dict[str, Metrics]) -> dict:
    """Everything the JSON report holds."""
    return {
        "csv": str(run.csv_path),
        "labelled": len(run.items),
        "scored": len(run.scores),
        "resumed": run.resumed,
        "missing": run.missing,
        "unreadable": [{"name": n, "error": e} for n, e in run.failed],
        "backends": run.backends,
        "metrics": {target: m.to_dict() for target, m in metrics.items()},
    }


def _num(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.4f}"


def format_report(run: EvalRun, metrics: dict[str, Metrics]) -> str:
    """Human-readable summary: counts, one metrics line per target, fit failures, problems."""
    lines = [f"scored {len(run.scores)} of {len(run.items)} labelled videos ({run.resumed} from an "
             f"earlier run; {len(run.missing)} missing, {len(run.failed)} unreadable)"]
    if len(run.backends) > 1:
        lines.append(f"warning: the scores come from several backends: {', '.join(run.backends)}")
    lines.append(f"{'':10s} {'SROCC':>7s} {'KROCC':>7s} {'PLCC':>7s} {'RMSE':>9s}")
    for target, m in metrics.items():
        lines.append(f"{target:10s} {_num(m.srocc):>7s} {_num(m.krocc):>7s} {_num(m.plcc):>7s} "
                     f"{_num(m.rmse):>9s}")
    for target, m in metrics.items():
        if m.fit_error:
            lines.append(f"{target}: logistic fit failed: {m.fit_error}")
    for name in run.missing:
        lines.append(f"missing: {name}")
    for name, reason in run.failed:
        lines.append(f"unreadable: {name}: {reason}")
    return "\n".join(lines)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.UsageError("--plot needs matplotlib: pip install 'cover-engine[plot]'") from None


def plot_fit(run: EvalRun, metrics: Metrics, path) -> None:
    """Scatter of raw overall score against MOS with the fitted logistic, saved as an image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pred, mos = run.values("overall")
    fig = Figure(figsize=(6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(pred, mos, s=10, alpha=0.6, label=f"{len(pred)} videos")
    if metrics.fit is not None:
        x = np.linspace(pred.min(), pred.max(), 256)
        ax.plot(x, metrics.fit(x), color="C3", label="4-parameter logistic fit")
    ax.set_xlabel("COVER overall score (raw)")
    ax.set_ylabel("MOS")
    ax.set_title(f"SROCC {_num(metrics.srocc)}   PLCC {_num(metrics.plcc)}")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)


def default_csv(labels: Path) -> Path:
    """``LABELS_STEM.cover.csv`` beside the label file, or in the current folder if that is read-only."""
    name = f"{labels.stem}.cover.csv"
    folder = labels.resolve().parent
    return folder / name if os.access(folder, os.W_OK) else Path.cwd() / name


def build_scorer(**options) -> Scorer:
    """The real scoring pipeline (imported here so the rest of this module works without it)."""
    from cover_engine.runtime.scoring import make_scorer

    return make_scorer(**options)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--labels", "labels_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Label file: upstream 'filename,a,t,mos' lines, or a CSV with a header.")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder the label file's names are relative to.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Label format.")
@click.option("--name-column", help="CSV column with the file names (default: name, filename, file, ...).")
@click.option("--mos-column", help="CSV column with the MOS (default: mos, mosfull, score, label).")
@scorer_options
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Per-video scores (default: LABELS_STEM.cover.csv beside the label file, "
                   "or in the current folder if that one is read-only).")
@click.option("--resume", is_flag=True, help="Continue the run in --csv: skip the videos it already scored.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N labelled videos.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write counts, metrics, fit parameters and problem videos as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write predicted-vs-MOS scatter with the fitted curve (PNG; needs matplotlib).")
@click.option("--rescaled", "rescaled_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write raw scores with z-score, rank in [0, 1] and fixed 0-100 rescalings (CSV).")
def main(labels_path, root, fmt, name_column, mos_column, backend, engines, weights, clip_weights, config,
         random_weights, device, precision, seed, clips, csv_path, resume, limit, json_path, plot_path,
         rescaled_path):
    """Score a labelled video set with COVER and report SROCC, KROCC, PLCC and RMSE."""
    if plot_path is not None:
        _require_matplotlib()
    try:
        items = read_labels(labels_path, fmt, name_column=name_column, mos_column=mos_column)
    except CoverError as exc:
        raise click.ClickException(str(exc)) from None
    items = items[:limit] if limit else items
    csv_path = csv_path or default_csv(labels_path)
    if not resume and csv_path.is_file() and csv_path.stat().st_size:
        raise click.UsageError(f"{csv_path} already holds scores: pass --resume to continue that run, "
                               "or choose another --csv")
    click.echo(f"scores -> {csv_path}", err=True)
    options = dict(backend=backend, engines=engines, weights=weights, clip_weights=clip_weights,
                   config=config, random_weights=random_weights, device=device, precision=precision,
                   seed=seed, clips=clips, log=lambda msg: click.echo(msg, err=True))
    started = time.perf_counter()
    try:
        run = evaluate(items, lambda: build_scorer(**options), csv_path, root=root, resume=resume)
    except OSError as exc:  # the CSV itself cannot be written; per-video errors are caught inside
        raise click.ClickException(f"{exc.filename or csv_path}: {exc.strerror or exc}") from None
    except (CoverError, KeyboardInterrupt) as exc:
        why = str(exc) if isinstance(exc, CoverError) else "interrupted"
        raise click.ClickException(f"{why}\n(rows already in {csv_path} are kept; "
                                   "continue with --resume)") from None
    if run.dropped_partial_row:
        click.echo(f"{csv_path}: dropped a partly written last row left by an interrupted run", err=True)
    new = len(run.scores) - run.resumed
    if new:
        click.echo(f"scored {new} videos in {time.perf_counter() - started:.1f} s", err=True)
    if run.failed:
        click.echo(f"unreadable videos are listed in {run.errors_path}", err=True)

    metrics = run.metrics()
    click.echo(format_report(run, metrics))
    if json_path is not None:
        report = {"labels": str(labels_path), "root": str(root), **report_dict(run, metrics)}
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    if not run.scores:
        raise click.ClickException("no video was scored")
    if rescaled_path is not None:
        write_rescaled(run, rescaled_path)
    if plot_path is not None:
        plot_fit(run, metrics["overall"], plot_path)
