"""ONNX Runtime's host memory and speed under different session settings, each in a fresh process.

    python -m cover_engine.bench.ort_memory --engines DIR --input CLIP.mp4 \\
        --variant default --variant arena=0,pattern=0 --variant shrink=1 --json out.json

A variant is a comma-separated list of ``OrtSettings`` changes: ``threads=N``,
``opt=disabled|basic|extended|all``, ``arena=0|1``, ``pattern=0|1``, ``shrink=0|1``,
``prepack=0|1``, ``fold=0|1``; ``default`` is ONNX Runtime's own settings, ``lean`` (optionally
followed by changes) cover-engine's for large models (``OrtSettings.lean``). Each runs in its own process, so its peak
(``VmHWM``) is its own: the process builds the backend (``load``), then scores the clip
``--runs`` times end to end (decode, views, the three graphs). The scores of every variant are
printed too: settings may change speed and memory, never the numbers beyond float noise.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import click

_KEYS = {"threads": ("threads", int), "opt": ("optimization", str),
         "arena": ("arena", lambda v: v == "1"), "pattern": ("mem_pattern", lambda v: v == "1"),
         "shrink": ("shrink_arena", lambda v: v == "1"), "prepack": ("prepack", lambda v: v == "1"),
         "fold": ("fold_constants", lambda v: v == "1")}


def parse_variant(text: str):
    """``OrtSettings`` from ``key=value,...`` (``default``: the defaults)."""
    from cover_engine.runtime.engines.ort_runner import OrtSettings

    settings = OrtSettings()  # ONNX Runtime's own defaults; "lean" starts from OrtSettings.lean()
    if text in ("", "default"):
        return settings
    if text.startswith("lean"):
        settings, text = OrtSettings.lean(), text[len("lean"):].lstrip(",")
        if not text:
            return settings
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in _KEYS:
            raise click.BadParameter(f"unknown key {key!r} in {text!r} (keys: {', '.join(_KEYS)})")
        field, conv = _KEYS[key]
        settings = replace(settings, **{field: conv(value)})
    return settings


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_child(engines: Path, clip: Path, variant: str, runs: int) -> dict:
    """One variant, measured in this process (run by the parent in a fresh one)."""
    from cover_engine.runtime.engines.ort_runner import OrtBackend
    from cover_engine.runtime.scoring import Scorer

    settings = parse_variant(variant)
    t0 = time.perf_counter()
    backend = OrtBackend(engines, settings=settings)
    load_s = time.perf_counter() - t0
    peak_load = _peak()
    scorer = Scorer(backend)
    times, cpu, score = [], [], None
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        score = scorer.score(clip)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"variant": variant, "settings": asdict(settings), "load_s": load_s,
            "run_s": times, "run_cpu_s": cpu, "peak_after_load": peak_load, "peak": _peak(),
            "scores": {k: getattr(score, k) for k in ("semantic", "technical", "aesthetic",
                                                     "overall")} if score else None}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engines", type=click.Path(file_okay=False, exists=True, path_type=Path),
              required=True, help="fp32 engine folder (cover-export).")
@click.option("--input", "clip", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="Video to score.")
@click.option("--variant", "variants", multiple=True, default=("default",), show_default=True,
              help="Session settings to measure (repeatable), e.g. arena=0,pattern=0.")
@click.option("--runs", type=click.IntRange(min=0), default=1, show_default=True,
              help="Scoring runs after loading (0: measure loading only).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--child", is_flag=True, hidden=True)
def main(engines, clip, variants, runs, json_path, child):
    """Peak host memory and time of ONNX Runtime under each session-settings variant."""
    if child:
        click.echo(json.dumps(measure_child(engines, clip, variants[0], runs)))
        return
    for v in variants:
        parse_variant(v)  # refuse typos before the first long run
    results = []
    for v in variants:
        cmd = [sys.executable, "-m", "cover_engine.bench.ort_memory", "--engines", str(engines),
               "--input", str(clip), "--variant", v, "--runs", str(runs), "--child"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            results.append({"variant": v, "error": out.stderr.strip().splitlines()[-1:]})
        else:
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        if "error" in r:
            click.echo(f"{v}: failed: {r['error']}")
        elif not r["run_s"]:
            click.echo(f"{v}: load {r['load_s']:.1f} s, peak {r['peak'] / 2**30:.2f} GiB")
        else:
            click.echo(f"{v}: load {r['load_s']:.1f} s, run {min(r['run_s']):.1f} s "
                       f"(CPU {min(r['run_cpu_s']):.1f} s), peak "
                       f"{r['peak'] / 2**30:.2f} GiB (after load {r['peak_after_load'] / 2**30:.2f}),"
                       f" overall {r['scores']['overall']:.6f}")
    if json_path:
        import os

        info = {"machine": platform.platform(), "cpus": os.cpu_count(),
                "load_avg": os.getloadavg(), "command": " ".join(sys.argv),
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": results}
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        Path(json_path).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
