"""``cover-eval``: score a labelled set and report SROCC/KROCC/PLCC/RMSE the way upstream does.

Scores go to a per-video CSV as they are produced (see :mod:`.results`), so an interrupted run
is continued with ``--resume`` and loses at most the video in flight. Missing and unreadable
videos are listed, not fatal. Metrics follow docs/cover-behaviour.md section 5 (:mod:`.metrics`), for the
overall score and each branch.

:func:`evaluate` does the work with any object that has ``score(path) -> FileScore``; the
command (:mod:`cover_engine.runtime.cli.eval`) only parses options, builds the scorer and writes
the reports with the functions here.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.durable import write_atomic
from cover_engine.runtime.errors import CoverError, InputError
from cover_engine.runtime.eval.labels import LabelItem, locate
from cover_engine.runtime.eval.metrics import Metrics, compute_metrics, rank_unit, to_percent, zscore
from cover_engine.runtime.results import FileScore, FileScorer, RowLog, ScoreCsvWriter, score_columns

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

    @property
    def colours(self) -> list[str]:
        """The YUV -> RGB conversions the scores were made with (one, unless a resumed run
        changed ``--colour``)."""
        return sorted({s.colour for s in self.scores.values()})


def errors_path_for(csv_path: Path) -> Path:
    """Where the unreadable videos of ``csv_path``'s run are listed: ``NAME.errors.csv`` beside it."""
    return csv_path.with_name(csv_path.stem + ".errors.csv")


def evaluate(items: Sequence[LabelItem], scorer: Union[FileScorer, Callable[[], FileScorer]], csv_path,
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

    rows = rescaled_rows(run)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue().encode("utf-8"))


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
        "colours": run.colours,
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
    if len(run.colours) > 1:
        lines.append(f"warning: the scores come from several colour conversions: "
                     f"{', '.join(run.colours)}")
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
    image = io.BytesIO()
    kind = Path(path).suffix.lstrip(".").lower()
    fig.savefig(image, format=kind if kind in fig.canvas.get_supported_filetypes() else "png")
    write_atomic(path, image.getvalue())
