"""``cover-bench`` output: the report dictionary rendered as a terminal table, JSON and a plot.

The report is a plain JSON-ready dict built by ``cli.py``; everything here only reads it, so the
table, the JSON file and the plot can never disagree. Stage figures are in milliseconds
(``min_ms``, ``p50_ms``, ``p95_ms``, ``mean_ms``, ``n``).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from cover_engine.runtime.durable import write_atomic

#: Stages in timeline order. ``glue`` is inference time not inside a named model stage (host <->
#: device copies, input checks, launches, feature expansion); ``inference`` is the backend call
#: and ``end-to-end`` is file -> scores.
DECODE = "decode"
PREPROCESS = ("preprocess:semantic", "preprocess:technical", "preprocess:aesthetic")
MODEL_STAGES = ("semantic", "technical", "aesthetic", "gates+heads", "glue")
STAGE_ORDER = (DECODE,) + PREPROCESS + MODEL_STAGES + ("inference", "end-to-end")
#: The stages stacked in the plot (together they partition the end-to-end time).
STACKED = (DECODE,) + PREPROCESS + MODEL_STAGES

BASELINE = "torch-fp32"


def stage_ms(backend: Mapping[str, Any], stage: str, key: str = "p50_ms") -> Optional[float]:
    """A measured backend's figure for a stage, or None where it has no such stage."""
    stats = backend.get("stages", {}).get(stage)
    return None if stats is None else stats[key]


def add_speedups(report: dict) -> None:
    """Each measured backend's speed-up over torch fp32 eager (p50 ratios), in place."""
    rows = {b["name"]: b for b in report["backends"] if b["status"] == "ok"}
    base = rows.get(BASELINE)
    for row in rows.values():
        row["speedup"] = {}
        if base is None:
            continue
        for stage in ("inference", "end-to-end"):
            ours, theirs = row["stages"].get(stage), base["stages"].get(stage)
            if ours and theirs and ours["p50_ms"] > 0:
                row["speedup"][stage] = theirs["p50_ms"] / ours["p50_ms"]


def format_table(report: Mapping[str, Any]) -> str:
    """A summary line per backend, then the stage breakdown (p50 with min and p95)."""
    s, clip = report["settings"], report["clip"]
    lines = [
        f"cover-bench  {clip['width']}x{clip['height']}, {clip['frames']} frames, {clip['codec']} "
        f"({clip['path']})",
        f"model {s['config']}, weights {s['weights']}; {s['runs']} runs after {s['warmup']} "
        f"warm-up; batch {s['batch']}, concurrency {s['concurrency']}; device {s['device']}",
    ]
    ref = report.get("reference_matmul")
    if ref:
        lines.append(f"reference: dense {ref['dtype']} matmul {ref['n']}x{ref['n']} on "
                     f"{ref['device']}: {ref['tflops']:.3g} TFLOP/s (best of before and after "
                     "the rows)")
    lines.append("")

    header = ("backend", "e2e p50 ms", "e2e p95 ms", "inference p50 ms", "speed-up e2e",
              "speed-up inference", "clips/s", "semantic TFLOP/s", "% of matmul", "host MiB",
              "GPU MiB")
    body: list[tuple[str, ...]] = []
    notes: list[str] = []
    for b in report["backends"]:
        if b["status"] != "ok":
            notes.append(f"{b['name']}: {b['status']}: {b['reason']}")
            continue
        st, sp, eff, mem = b["stages"], b.get("speedup", {}), b.get("efficiency", {}), b["memory"]
        tput = b.get("throughput") or {}
        body.append((
            b["name"],
            _num(st["end-to-end"]["p50_ms"]), _num(st["end-to-end"]["p95_ms"]),
            _num(st["inference"]["p50_ms"]),
            _ratio(sp.get("end-to-end")), _ratio(sp.get("inference")),
            _num(tput.get("clips_per_s"), 3),
            _num(eff.get("semantic_tflops"), 3),
            _num(100 * eff["ratio_to_matmul"], 1) if eff.get("ratio_to_matmul") else "-",
            _num(_mib(mem.get("host_peak_bytes")), 0),
            _num(_mib(mem.get("gpu_peak_bytes")), 0),
        ))
    lines += _columns(header, body)
    lines += [f"  {n}" for n in notes]

    measured = [b for b in report["backends"] if b["status"] == "ok"]
    if measured:
        lines += ["", "stage times, ms: p50 (min / p95)"]
        header = ("stage",) + tuple(b["name"] for b in measured)
        body = []
        for stage in STAGE_ORDER:
            cells = []
            for b in measured:
                stats = b["stages"].get(stage)
                cells.append("-" if stats is None else
                             f"{_num(stats['p50_ms'])} ({_num(stats['min_ms'])} / "
                             f"{_num(stats['p95_ms'])})")
            if any(c != "-" for c in cells):
                body.append((stage,) + tuple(cells))
        lines += _columns(header, body)
        for b in measured:
            if b.get("note"):
                lines.append(f"  {b['name']}: {b['note']}")
    return "\n".join(lines)


def write_json(report: Mapping[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))  # whole or nothing


def write_plot(report: Mapping[str, Any], path: Path) -> None:
    """Horizontal stacked bars of mean stage times per measured backend.

    Means, not medians: the mean of a sum is the sum of the means, so the stacked stages add up
    to the marked end-to-end mean (less the untimed Python between stages).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [b for b in report["backends"] if b["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * max(1, len(measured))))
    colours = plt.get_cmap("tab10").colors
    names = [b["name"] for b in measured]
    for i, stage in enumerate(STACKED):
        widths = [stage_ms(b, stage, "mean_ms") or 0.0 for b in measured]
        if not any(widths):
            continue
        lefts = [sum(stage_ms(b, s, "mean_ms") or 0.0 for s in STACKED[:i]) for b in measured]
        ax.barh(names, widths, left=lefts, color=colours[i % len(colours)], label=stage)
    for y, b in enumerate(measured):
        ax.plot(b["stages"]["end-to-end"]["mean_ms"], y, marker="|", markersize=18, color="black")
    clip, s = report["clip"], report["settings"]
    ax.set_title(f"COVER on {clip['width']}x{clip['height']}, {clip['frames']} frames, "
                 f"{clip['codec']}, device {s['device']}: mean of {s['runs']} "
                 f"run{'s' if s['runs'] != 1 else ''} per stage "
                 "(| end-to-end)", fontsize=9)
    ax.set_xlabel("ms")
    ax.invert_yaxis()
    if measured:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    kind = path.suffix.lstrip(".").lower()
    fig.savefig(image, dpi=120, bbox_inches="tight",
                format=kind if kind in fig.canvas.get_supported_filetypes() else "png")
    write_atomic(path, image.getvalue())  # whole or nothing
    plt.close(fig)


def _columns(header: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    fmt = lambda row: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return [fmt(header), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in body]


def _num(value: Optional[float], digits: Optional[int] = None) -> str:
    if value is None:
        return "-"
    if digits is None:  # milliseconds: 3 significant figures, at least one decimal below 100
        digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f}"


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(nbytes: Optional[int]) -> Optional[float]:
    return None if nbytes is None else nbytes / 2**20
