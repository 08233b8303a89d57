"""What ``cover-bench`` does, but printing: :func:`run_bench` returns the report.

The command is ``runtime/cli/bench.py``. The parts: the clip (``clips.py``), the rows and their
probes (``probes.py``), measuring (``measure.py``), machine facts (``machine.py``), clocks and
statistics (``stages.py``), the report's table, JSON and plot (``report.py``).

One run of the command measures every backend on the same machine, the same clip and the same
model. Each measured run is the whole path from file to scores: decode (PyAV), each view's
preprocessing, the backend call (split into branches, gates and heads where the backend allows
it) and the score reduction. Host stages are timed with ``perf_counter``; model stages on a GPU
with CUDA events (see ``stages.py``). torch fp32 eager is the upstream-equivalent baseline that
every other row is compared with. Weights are random unless ``--weights`` is given: speed does
not depend on the values.
"""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from cover_engine.runtime.constants import views_for_inputs
from cover_engine.runtime.errors import CoverError, InputError, one_line
from cover_engine.runtime.views.assemble import load_views
from . import report as rep
from .clips import bench_clip
from .machine import load_average, machine_info, resolve_device, versions
from .measure import Plan, run_row
from .probes import Context, Log, skip_reason
from .stages import matmul_tflops, vit_flops_per_frame

__all__ = ["run_bench"]


def run_bench(*, input_path: Optional[Path], resolution: str, frames: int, codec: str,
              backends: list[str], runs: int, warmup: int, batch: int, concurrency: int,
              device: str, config: Optional[Path], weights: Optional[Path],
              clip_weights: Optional[Path], engines: Optional[Path],
              threads: Optional[int] = None, command: str = "",
              log: Log = print) -> dict[str, Any]:
    """Everything ``cover-bench`` does but printing: returns the report dictionary."""
    import torch

    from cover_engine.export.config import resolve_config

    if threads:
        torch.set_num_threads(threads)
    cfg = resolve_config(config)
    if weights is not None:  # fail now, not after the first rows
        from cover_engine.export.config import ModelConfig
        from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_WEIGHTS
        from cover_engine.runtime.fetch import resolve_weights

        official = cfg == ModelConfig.official()
        weights = resolve_weights(COVER_WEIGHTS, weights, official=official)
        clip_weights = resolve_weights(CLIP_WEIGHTS, clip_weights, official=official)
    device = resolve_device(device)
    machine = machine_info(device)
    specs = views_for_inputs(cfg.inputs)
    if input_path is not None:
        path, generated = Path(input_path), False
    else:
        path, generated = bench_clip(resolution, frames, codec, log)
    reference_views, info = load_views(path, specs)  # validates the file; also warms the cache
    if info.is_image:
        raise InputError(f"{path}: is an image; cover-bench measures videos")
    del reference_views

    sem = cfg.semantic
    _, _, t, h, w = cfg.inputs["semantic"]
    per_frame = vit_flops_per_frame(sem.width, sem.layers, sem.patch_size, sem.output_dim, h, w)
    log(f"cover-bench: reference matmul on {device}")
    reference_before = matmul_tflops(device)

    plan = Plan(path=path, specs=specs, num_frames=info.num_frames, runs=runs, warmup=warmup,
                batch=batch, concurrency=concurrency, semantic_flops=per_frame * t)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cover-bench-") as workdir:
        ctx = Context(config=cfg, device=device, batch=batch, weights=weights,
                      clip_weights=clip_weights, engines=engines, threads=threads,
                      workdir=Path(workdir), log=log)
        engine_rows = [b for b in backends if b in ("onnxruntime", "tensorrt")]
        for name in backends:
            if engine_rows and name == engine_rows[0]:
                _prepare_exports(ctx, engine_rows)
            rows.append(run_row(name, ctx, plan))
        ctx.drop_model()

    # Measured before and after the rows, best kept: on a shared machine one moment's load can
    # halve it, and the ratio below needs the machine's ceiling, not its worst moment.
    reference_after = matmul_tflops(device)
    reference = dict(reference_before, tflops=max(reference_before["tflops"],
                                                   reference_after["tflops"]),
                     tflops_before=reference_before["tflops"],
                     tflops_after=reference_after["tflops"])
    for row in rows:
        semantic = row.get("efficiency", {}).get("semantic_tflops")
        if semantic:
            row["efficiency"]["ratio_to_matmul"] = semantic / reference["tflops"]
    machine["load_average_1m_after"] = load_average()
    report: dict[str, Any] = {
        "tool": "cover-bench",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "versions": versions(),
        "settings": {
            "input": str(input_path) if input_path else None, "resolution": resolution,
            "frames": frames, "codec": codec, "backends": backends, "runs": runs,
            "warmup": warmup, "batch": batch, "concurrency": concurrency, "device": device,
            "config": str(config) if config else "official",
            "weights": (f"{weights} + {clip_weights or 'cached CLIP ViT-L/14'}" if weights
                        else "random (seed 0)"),
            "engines": str(engines) if engines else None,
            "threads": threads,
            "torch_threads": torch.get_num_threads(),
        },
        "clip": {"path": str(path), "generated": generated, "width": info.width,
                 "height": info.height, "frames": info.num_frames, "codec": info.codec,
                 "pix_fmt": info.pix_fmt, "bytes": path.stat().st_size},
        "model": {"config": cfg.to_dict(),
                  "semantic_flops_per_frame": per_frame,
                  "semantic_flops_per_clip": per_frame * t},
        "reference_matmul": reference,
        "backends": rows,
    }
    rep.add_speedups(report)
    return report


def _prepare_exports(ctx: Context, rows: list[str]) -> None:
    """Make the engine rows' exports while the torch model is loaded, then free it, so that
    the engine rows' memory peaks do not carry the model that torch needed."""
    for row in rows:
        if skip_reason(row, ctx) is not None or ctx.engines is not None:
            continue
        try:
            ctx.engine_dir(*(("fp32", False) if row == "onnxruntime" else ("fp16", True)))
        except CoverError as exc:  # the row reports it when it asks again
            ctx.log(f"cover-bench: export for {row} failed: {one_line(exc)}")
    ctx.drop_model()
