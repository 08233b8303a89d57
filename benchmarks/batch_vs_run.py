"""``cover-batch`` against ``cover-run`` over the same files, side by side, in alternating rounds.

    python -m cover_engine.bench.batch_vs_run --files 40 --size 960x540 --seconds 8 \\
        --rounds 2 --config $COVER_VECTORS/model/config.json --json out.json

Generates (once, in ``--folder``) ``--files`` synthetic clips, then times, in each round and in
this order: ``cover-run`` over the folder; ``cover-batch`` starting its own local Ray; and, with
``--running-ray``, ``cover-batch --address auto`` joining a Ray started just before it with
``ray start --head`` (and stopped after it, so no Ray runs during the other rows); and, with
``--ray-floor``, ``bench.ray_floor``: the same local Ray and Ray Data pipeline with workers that
score nothing, the least ``cover-batch`` can take here. Every row reads the same files, the
scoring ones with the same random-weight model; the cached export and the CPU probe are made
before the first round, so no row pays for them. Wall time of each whole command; the best and
the median of the rounds.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from .clips import write_clip


def _bin(name: str) -> str:
    """The console script of this environment (not another Python's on PATH)."""
    return str(Path(sys.executable).with_name(name))


def _timed(cmd: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    tail = (out.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - start, out.returncode, tail


def _ray(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], capture_output=True,
                   check=args[0] != "stop")


@click.command()
@click.option("--folder", type=click.Path(path_type=Path), default=None,
              help="Where the clips are generated (default: a temporary folder).")
@click.option("--files", type=click.IntRange(1), default=40, show_default=True)
@click.option("--size", default="960x540", show_default=True, help="WIDTHxHEIGHT of the clips.")
@click.option("--seconds", type=click.FloatRange(0.1), default=8.0, show_default=True,
              help="Length of each clip at 30 fps.")
@click.option("--rounds", type=click.IntRange(1), default=2, show_default=True)
@click.option("--config", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Model config JSON (a small one: the commands use --random-weights).")
@click.option("--running-ray/--no-running-ray", default=True, show_default=True,
              help="Also time cover-batch joining a running local Ray (--address auto).")
@click.option("--ray-floor/--no-ray-floor", default=True, show_default=True,
              help="Also time Ray Data over the same paths with no-op workers (bench.ray_floor).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(folder, files, size, seconds, rounds, config, running_ray, ray_floor, json_path):
    """Wall time of cover-run and cover-batch over the same generated clips."""
    width, height = (int(v) for v in size.lower().split("x"))
    folder = folder or Path(tempfile.mkdtemp(prefix="cover-batch-vs-run-"))
    clips = folder / f"{files}x{width}x{height}x{seconds:g}s"
    for i in range(files):
        path = clips / f"clip{i:03d}.mp4"
        if not path.exists():
            write_clip(path, width, height, max(1, round(30 * seconds)), seed=i)
    model = ["--config", str(config), "--random-weights"]
    run = [_bin("cover-run"), str(clips), *model, "-q"]
    out = folder / "results.parquet"
    batch = [_bin("cover-batch"), str(clips), "--out", str(out), *model]
    subprocess.run(run[:2] + [str(next(clips.glob("*.mp4")))] + run[2:], capture_output=True,
                   check=True)  # the cached export and the CPU probe, before any timing
    rows = {"cover-run": run, "cover-batch": batch}
    if running_ray:
        rows["cover-batch --address auto"] = batch + ["--address", "auto"]
    if ray_floor:
        rows["Ray Data, no-op workers"] = [sys.executable, "-m", "cover_engine.bench.ray_floor",
                                           str(clips), "--workers", str(min(os.cpu_count() or 1,
                                                                            -(-files // 4)))]
    times: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(rounds):
        click.echo(f"round {r + 1}: {time.strftime('%H:%M:%S', time.gmtime())} UTC, "
                   f"load {os.getloadavg()[0]:.2f}")
        for name, cmd in rows.items():
            for leftover in (out, out.with_name(out.name + ".parts")) if "--out" in cmd else ():
                subprocess.run(["rm", "-rf", str(leftover)], check=True)  # score all, resume none
            joined = "--address" in cmd
            if joined:
                _ray("start", "--head", "--num-cpus", str(os.cpu_count() or 1),
                     "--include-dashboard=false", "--disable-usage-stats")
            try:
                seconds_taken, code, tail = _timed(cmd)
            finally:
                if joined:
                    _ray("stop")
            if code != 0:
                raise click.ClickException(f"{name} failed ({code}): {tail}")
            times[name].append(seconds_taken)
            click.echo(f"  {name:28s} {seconds_taken:7.2f} s")
    for label, pick in (("best", min), ("median", statistics.median)):
        base = pick(times["cover-run"])
        click.echo(f"{label} of the rounds: " + ", ".join(
            f"{name} {pick(t):.2f} s ({base / pick(t):.2f}x cover-run)"
            for name, t in times.items()))
    if json_path:
        json_path.write_text(json.dumps({
            "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": platform.platform(), "cpus": os.cpu_count(), "files": files,
            "size": [width, height], "seconds": seconds, "rows": {k: " ".join(v) for k, v in rows.items()},
            "times_s": times}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
