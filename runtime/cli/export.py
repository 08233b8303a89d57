"""``cover-export``: turn the PyTorch model into an engine folder a host without torch can run.

Examples::

    cover-export                                  # fp32 ONNX graphs in engines/cover-fp32/
    cover-export --precision fp16                 # + TensorRT engines when tensorrt is installed
    cover-export --config my.json --weights a.pth --clip-weights b.pt --out engines/mine
    cover-export --calibration kv1k.cal.json      # manifest carries the MOS calibration
    cover-export --head mine.pth --out engines/mine   # gates and heads trained by cover-train

The exporter (:mod:`cover_engine.export.onnx_export`) needs torch; it is imported inside the
command, so this module, like all of ``runtime``, imports without torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from cover_engine.runtime.cli.common import command, cover_errors
from cover_engine.runtime.cli.options import (CheckedPath, calibration_option, head_option,
                                              quiet_option, weight_options)
from cover_engine.runtime.engines.manifest import MODES
from cover_engine.runtime.engines.manifest.schema import MAX_BATCH
from cover_engine.runtime.folders import folder_problem

__all__ = ["main", "default_name"]


def _check_name(ctx: click.Context, param: click.Parameter, value: Optional[str]):
    """An export name is one plain folder name: it becomes ``engines/<name>/``."""
    if value is not None and (not value.strip() or value in (".", "..") or len(value) > 200
                              or any(c in value for c in "/\\\0\n\r")):
        raise click.BadParameter(f"{value!r} is not a plain folder name (no slashes, not . or "
                                 "..; at most 200 characters)")
    return value


def default_name(precision: str, config: Optional[Path], random_weights: bool) -> str:
    """``cover-fp16``; a custom config's file stem instead of ``cover``; ``random-`` prefixed."""
    base = "cover" if config is None else Path(config).stem
    return f"{'random-' if random_weights else ''}{base}-{precision}"


@command()
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16 keeps LayerNorm, softmax and reductions in fp32.")
@click.option("--out", type=CheckedPath(file_okay=False, path_type=Path),
              help="Output folder (default: engines/<name>/).")
@click.option("--name", callback=_check_name,
              help="Export name, also the default folder's name (default: cover-<precision>).")
@weight_options()
@head_option
@click.option("--batch-max", type=click.IntRange(1, MAX_BATCH), default=8, show_default=True,
              help="Largest batch the TensorRT engines accept.")
@click.option("--batch-opt", type=click.IntRange(1, MAX_BATCH), default=1, show_default=True,
              help="Batch the TensorRT engines are tuned for (at most --batch-max).")
@click.option("--opset", type=click.IntRange(17, 20), default=18, show_default=True,
              help="ONNX opset (TensorRT 10 parses up to 20).")
@click.option("--engine/--no-engine", default=None,
              help="Build TensorRT engines (default: for fp16, when tensorrt is installed).")
@click.option("--timing-cache", type=CheckedPath(dir_okay=False, path_type=Path),
              help="TensorRT timing cache to reuse and update (default: <out>/timing.cache).")
@click.option("--images/--no-images", default=True, show_default=True,
              help="Also export the single-image (T=1) graphs.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare each graph in ONNX Runtime with PyTorch on random views.")
@calibration_option("Put this calibration (cover-eval --fit-calibration, made for these "
                    "weights) into the manifest, so every host can report calibrated MOS.")
@quiet_option
def main(precision, out, name, weights, clip_weights, config, random_weights, head, batch_max,
         batch_opt, opset, engine, timing_cache, images, check, calibration, quiet):
    """Export COVER's three branches to ONNX (one graph per branch, for videos and for images),
    optionally build TensorRT engines, and write manifest.json describing all of it."""
    if batch_opt > batch_max:
        raise click.BadParameter(f"{batch_opt} is larger than --batch-max {batch_max}",
                                 param_hint="'--batch-opt'")
    name = name or default_name(precision, config, random_weights)
    out = out or Path("engines") / name
    problem = folder_problem(out, write=True)  # before minutes of tracing, not after
    if problem:
        raise click.ClickException(f"{out}: {problem} (--out)")
    log = (lambda msg: None) if quiet else click.echo
    with cover_errors():
        cal = None
        if calibration is not None:  # refused for other weights before the long export
            from cover_engine.runtime.eval.calibration import load_calibration
            from cover_engine.runtime.model_identity import identity_from_options

            cal = load_calibration(calibration)
            cal.check(identity_from_options(backend="torch", weights=weights,
                                            clip_weights=clip_weights, config=config,
                                            random_weights=random_weights),
                      source=str(calibration))
        try:
            from cover_engine.export.onnx_export import export_all
        except ImportError as exc:
            raise click.ClickException(f"cover-export needs torch and onnx ({exc}); "
                                       "pip install 'cover-engine[export]'") from None
        export_all(out, weights=weights, clip_weights=clip_weights, config=config,
                   precision=precision, random_weights=random_weights, name=name, opset=opset,
                   batch_max=batch_max, batch_opt=batch_opt, engines=engine,
                   timing_cache=timing_cache, modes=MODES if images else ("video",),
                   check=check, calibration=cal.to_dict() if cal else None, head=head,
                   log=log)


if __name__ == "__main__":  # pragma: no cover
    main()
