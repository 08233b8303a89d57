"""Measuring one row: latency stage by stage, throughput, memory.

Each measured run is the whole path from file to scores: decode (PyAV), each view's
preprocessing (:func:`timed_views`), the backend call (split into branches, gates and heads
where the backend allows it) and the score reduction. Host stages are timed with
``perf_counter``; model stages on a GPU with CUDA events (see ``stages.py``).
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cover_engine.runtime.constants import BRANCHES, ViewSpec
from cover_engine.runtime.errors import CoverError, one_line
from cover_engine.runtime.media import decode
from cover_engine.runtime.results import branch_scores
from cover_engine.runtime.views.assemble import ViewAssembler, normalise, plan_views
from cover_engine.runtime.views.sampling import needed_frames
from . import report as rep
from .probes import Context, Probe, device_used, make_probe, skip_reason
from .stages import CpuClock, Timer, host_peak_bytes, release_memory, reset_host_peak, summarise

__all__ = ["timed_views", "Plan", "measure", "measure_throughput", "run_row"]


def timed_views(path: Path, specs: Mapping[str, ViewSpec], num_frames: int,
                timer: Timer) -> dict[str, np.ndarray]:
    """Normalised views ``(1, 3, T, H, W)`` as ``views.load_views`` makes them, stage by stage.

    One assembler per view, so each view's sampling (with the colour conversion of the pixels
    it takes) is timed on its own; ``decode`` is opening the file and FFmpeg's decoding.
    """
    with timer.section("decode"):
        info = decode.probe(path)
        plans = plan_views(num_frames, info.height, info.width, specs)
        frames = decode.iter_frames(path, needed_frames({n: p.indices for n, p in plans.items()}))
    assemblers = {name: ViewAssembler({name: plan}) for name, plan in plans.items()}
    while True:
        with timer.section("decode"):
            item = next(frames, None)
        if item is None:
            break
        index, frame = item
        for name, assembler in assemblers.items():
            with timer.section(f"preprocess:{name}"):
                assembler.add(index, frame)
    views = {}
    for name, assembler in assemblers.items():
        with timer.section(f"preprocess:{name}"):
            views[name] = normalise(assembler.views()[name], specs[name])[None]
    return views


@dataclass
class Plan:
    """How every row is measured."""

    path: Path
    specs: Mapping[str, ViewSpec]
    num_frames: int
    runs: int
    warmup: int
    batch: int
    concurrency: int
    semantic_flops: float            # per clip


def measure(probe: Probe, plan: Plan) -> dict[str, Any]:
    """Latency stages over ``runs`` after ``warmup``, then throughput; one report row."""
    host, device = Timer(CpuClock()), Timer(probe.clock)
    for i in range(plan.warmup + plan.runs):
        if i == plan.warmup:
            host.discard()
            device.discard()
        with host.section("end-to-end"):
            views = timed_views(plan.path, plan.specs, plan.num_frames, host)
            with host.section("inference"), probe.sections(device):
                maps = probe.backend.run(views)
            scores = branch_scores(maps)
        probe.extra(views, device)
        host.end_run()
        device.end_run()
        bad = [k for k, v in scores.items() if not np.all(np.isfinite(v))]
        if bad:
            raise CoverError(f"non-finite {', '.join(bad)} score")

    runs = []
    for h, d in zip(host.runs, device.runs):
        run = {**h, **d}
        if probe.stages_inside_run and d:
            run["glue"] = max(h["inference"] - sum(d.values()), 0.0)
        runs.append(run)
    stats = summarise(runs)
    stages = {name: stats[name].to_ms() for name in rep.STAGE_ORDER if name in stats}

    if plan.batch == 1 and plan.concurrency == 1:
        seconds = sum(h["end-to-end"] for h in host.runs)
        throughput = {"clips_per_s": plan.runs / seconds, "clips": plan.runs, "seconds": seconds,
                      "batch": 1, "concurrency": 1, "from": "the end-to-end runs above"}
    else:
        throughput = measure_throughput(probe, plan)

    efficiency: dict[str, Any] = {}
    if "semantic" in stats:
        efficiency["semantic_tflops"] = plan.semantic_flops / stats["semantic"].p50 / 1e12
    return {"stages": stages, "throughput": throughput, "efficiency": efficiency,
            "clock": {"host": host.clock.name, "model_stages": device.clock.name}}


def measure_throughput(probe: Probe, plan: Plan) -> dict[str, Any]:
    """Clips per second: ``concurrency`` threads, each scoring ``runs`` batches of ``batch``
    clips, every clip decoded and preprocessed (the same file stands in for distinct ones)."""
    lock = threading.Lock() if probe.serial else contextlib.nullcontext()

    def batch_once() -> None:
        parts = [timed_views(plan.path, plan.specs, plan.num_frames, Timer())
                 for _ in range(plan.batch)]
        views = {b: np.concatenate([p[b] for p in parts]) for b in BRANCHES}
        with lock:
            maps = probe.backend.run(views)
        branch_scores(maps)

    batch_once()  # new batch size: let the backend settle its shapes before the clock starts
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(plan.runs):
                batch_once()
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(plan.concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    clips = plan.batch * plan.concurrency * plan.runs
    return {"clips_per_s": clips / seconds, "clips": clips, "seconds": seconds,
            "batch": plan.batch, "concurrency": plan.concurrency, "from": "a separate timed phase"}


def run_row(name: str, ctx: Context, plan: Plan) -> dict[str, Any]:
    """One backend: built (or skipped with the reason), measured, closed."""
    row: dict[str, Any] = {"name": name, "status": "ok", "reason": ""}
    reason = skip_reason(name, ctx)
    if reason:
        return {**row, "status": "skipped", "reason": reason}
    release_memory()
    if ctx.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    host_reset = reset_host_peak()
    gpu_before = device_used(ctx.device)
    started = time.perf_counter()
    try:
        probe = make_probe(name, ctx)
    except CoverError as exc:  # missing engines, weights, providers: cannot run here
        return {**row, "status": "skipped", "reason": one_line(exc)}
    except Exception as exc:  # a backend that breaks while loading is reported, not fatal
        return {**row, "status": "failed", "reason": one_line(exc)}
    row["setup_s"] = time.perf_counter() - started
    row["engine"] = getattr(probe.backend, "name", name)
    row["note"] = probe.note
    ctx.log(f"cover-bench: measuring {name}")
    try:
        row.update(measure(probe, plan))
    except Exception as exc:  # a row that breaks is reported, the others still run
        return {**row, "status": "failed", "reason": one_line(exc)}
    finally:
        gpu_peak, gpu_method = probe.gpu_memory(gpu_before)
        probe.close()
    row["memory"] = {
        "host_peak_bytes": host_peak_bytes(),
        "host_method": ("peak resident set of the process while this backend was built and run "
                        "(VmHWM, reset before it)" if host_reset else
                        "peak resident set of the process so far (no reset possible here)"),
        "gpu_peak_bytes": gpu_peak,
        "gpu_method": gpu_method,
    }
    return row
