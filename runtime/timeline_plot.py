"""``--timeline-plot FILE.png``: each file's window scores over time, worst windows marked.

One panel per file: the three branch scores and the overall score as steps (a window's score
holds over the whole window), the whole-video score as a dotted line, and the lowest-scoring
windows shaded and numbered (1 = worst), which is where a person should look first. Needs
matplotlib (the ``plot`` extra); drawn off-screen, written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cover_engine.runtime.constants import BRANCHES, WORST_WINDOW_FRACTION, WORST_WINDOWS
from cover_engine.runtime.results import FileScore

__all__ = ["worst_windows", "plot_timeline"]

_COLOURS = {"semantic": "#1f77b4", "technical": "#2ca02c", "aesthetic": "#9467bd",
            "overall": "#222222"}


def worst_windows(overall: Sequence[float]) -> list[int]:
    """Indices of the windows to mark, worst first: up to :data:`WORST_WINDOWS`, at most one in
    :data:`WORST_WINDOW_FRACTION` of them (but one of two or three), none of a single window."""
    n = len(overall)
    if n < 2:
        return []
    count = min(WORST_WINDOWS, max(1, int(n * WORST_WINDOW_FRACTION)))
    return [int(i) for i in np.argsort(np.asarray(overall, np.float64), kind="stable")[:count]]


def _steps(segments, key):
    """x, y of a step line over the windows (each value held from its start to its end)."""
    x = [s["start"] for s in segments] + [segments[-1]["end"]]
    y = [s[key] for s in segments] + [segments[-1][key]]
    return x, y


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:04.1f}" if minutes else f"{secs:.1f} s"


def plot_timeline(results: Sequence[FileScore], path) -> Path:
    """Draw every result that has segments into one PNG (one panel per file) at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in results if r.segments is not None]
    if not shown:
        raise ValueError("no file has segments to plot")
    fig = Figure(figsize=(10, 0.6 + 2.9 * len(shown)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for ax, result in zip(axes, shown):
        _panel(ax, result)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
                   bbox_to_anchor=(0.5, 1.0), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    import io

    from cover_engine.runtime.durable import write_atomic

    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(path, png.getvalue())  # whole or not at all; OutputError names the path
    return Path(path)


def _panel(ax, result: FileScore) -> None:
    segments = result.segments
    name = Path(result.path).name
    if not segments:
        ax.text(0.5, 0.5, f"{name}: a still image has no timeline", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    for key in BRANCHES + ("overall",):
        x, y = _steps(segments, key)
        ax.step(x, y, where="post", color=_COLOURS[key], label=key,
                linewidth=2.2 if key == "overall" else 1.2, alpha=1.0 if key == "overall" else 0.8)
    ax.axhline(result.overall, color=_COLOURS["overall"], linestyle=":", linewidth=1,
               label="whole video (mean of windows)")
    worst = worst_windows([s["overall"] for s in segments])
    marks = ax.get_xaxis_transform()  # x in seconds, y in axes fraction
    for rank, i in enumerate(worst, start=1):
        seg = segments[i]
        ax.axvspan(seg["start"], seg["end"], color="#d62728", alpha=0.15, linewidth=0)
        ax.text((seg["start"] + seg["end"]) / 2, 0.97, str(rank), transform=marks,
                ha="center", va="top", fontsize=8, color="#d62728", fontweight="bold")
    ax.set_xlim(0, segments[-1]["end"])
    title = f"{name}: overall {result.overall:.3f} (mean of {len(segments)} windows)"
    if result.mos is not None:
        title += f", MOS {result.mos:.2f}"
    if worst:
        spans = "; ".join(
            f"{rank}) {_clock(segments[i]['start'])} - {_clock(segments[i]['end'])} "
            f"({segments[i]['overall']:.3f}"
            + (f", MOS {segments[i]['mos']:.2f}" if segments[i].get("mos") is not None else "")
            + ")" for rank, i in enumerate(worst, start=1))
        title += f"\nworst windows (shaded): {spans}"
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("raw score")
    ax.grid(alpha=0.3)
