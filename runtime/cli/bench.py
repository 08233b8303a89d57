"""``cover-bench``: how long a clip takes, where the time goes, and every backend side by side.

Examples::

    cover-bench                                   # 30-frame 4K H.264 clip, every backend here
    cover-bench --codec hevc --json bench.json --plot bench.png
    cover-bench --input clip.mp4 --backends torch-fp32,onnxruntime --runs 20
    cover-bench --config small.json --resolution 320x180 --frames 8 --device cpu

What is measured and how: :mod:`cover_engine.bench.run`. The measuring code needs torch (its
baseline row and the exports) and is imported when the command runs; only torch-free names
are imported here. Weights are random unless ``--weights`` is given: speed does not
depend on the values.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from cover_engine.bench.clips import BENCH_CODECS
from cover_engine.bench.probes import BACKENDS, Log, importable, parse_backends
from cover_engine.runtime.cli.common import CONTEXT_SETTINGS, OneLineCommand, cover_errors
from cover_engine.runtime.cli.options import (CheckedPath, Device, quiet_option, report_options,
                                              weight_options)

__all__ = ["main"]


class _RecordedCommand(OneLineCommand):
    """Keeps the arguments as given, so the report can state the exact command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


@click.command(cls=_RecordedCommand, context_settings=CONTEXT_SETTINGS)
@click.option("--input", "input_path", type=CheckedPath(dir_okay=False, path_type=Path),
              help="Benchmark this video instead of a generated clip.")
@click.option("--resolution", default="4k", show_default=True,
              help="Generated clip size: 4k, 1080p, 720p or WxH.")
@click.option("--frames", type=click.IntRange(min=1), default=30, show_default=True,
              help="Frames in the generated clip.")
@click.option("--codec", type=click.Choice(BENCH_CODECS), default="h264", show_default=True,
              help="Codec of the generated clip.")
@click.option("--backends", "backend_list", metavar="LIST",
              help=f"Comma-separated rows from {','.join(BACKENDS)} (default: all; those that "
                   "cannot run here are listed as skipped).")
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Measured runs per backend.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Unmeasured runs before them.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Clips per backend call in the throughput phase.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads scoring at once in the throughput phase.")
@click.option("--device", type=Device(allow_auto=True), default="auto", show_default=True,
              help="auto, cpu or cuda[:N].")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for torch and ONNX Runtime (default: each library's own).")
@weight_options(random_default=True)
@click.option("--engines", type=CheckedPath(file_okay=False, path_type=Path),
              help="An existing cover-export folder for the onnxruntime/tensorrt rows "
                   "(default: export the benchmark model to a temporary folder).")
@report_options(json_help="Write the full report (machine, versions, settings, every figure) here.",
                plot_help="Write stacked stage times per backend to this file")
@quiet_option
def main(input_path, resolution, frames, codec, backend_list, runs, warmup, batch, concurrency,
         device, threads, config, weights, clip_weights, engines, json_path, plot_path, quiet):
    """Measure COVER on one clip: stage times, throughput and memory for each backend."""
    log: Log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    if not importable("torch"):
        raise click.ClickException("cover-bench needs torch for its baseline and exports "
                                   "(pip install 'cover-engine[export]')")
    from cover_engine.bench import report as rep
    from cover_engine.bench.run import run_bench

    try:
        with cover_errors():
            report = run_bench(
                input_path=input_path, resolution=resolution, frames=frames, codec=codec,
                backends=parse_backends(backend_list), runs=runs, warmup=warmup, batch=batch,
                concurrency=concurrency, device=device, threads=threads, config=config,
                weights=weights, clip_weights=clip_weights if weights is not None else None,
                engines=engines,
                command=shlex.join(["cover-bench"] + click.get_current_context().meta["argv"]),
                log=log)
    except ValueError as exc:  # a malformed --resolution
        raise click.ClickException(str(exc)) from None
    click.echo(rep.format_table(report))
    with cover_errors():  # checked at parse time; a disk that fills up since still gets one line
        if json_path:
            rep.write_json(report, json_path)
            log(f"cover-bench: wrote {json_path}")
        if plot_path:
            rep.write_plot(report, plot_path)
            log(f"cover-bench: wrote {plot_path}")
    if not any(b["status"] == "ok" for b in report["backends"]):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
