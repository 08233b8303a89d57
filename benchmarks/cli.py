"""What ``cover-bench`` measures (the command is ``runtime/cli/bench.py``).

One run of the command measures every backend on the same machine, the same clip and the same
model. Each measured run is the whole path from file to scores: decode (PyAV), each view's
preprocessing, the backend call (split into branches, gates and heads where the backend allows
it) and the score reduction. Host stages are timed with ``perf_counter``; model stages on a GPU
with CUDA events (see ``stages.py``). torch fp32 eager is the upstream-equivalent baseline that
every other row is compared with. Weights are random unless ``--weights`` is given: speed does
not depend on the values.
"""
from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from .. import __version__
from cover_engine.runtime.constants import BRANCHES, ViewSpec, views_for_inputs
from cover_engine.runtime.media import decode
from cover_engine.runtime.errors import CoverError, InputError, one_line
from cover_engine.runtime.views.sampling import needed_frames
from cover_engine.runtime.results import branch_scores
from cover_engine.runtime.views.assemble import ViewAssembler, load_views, normalise, plan_views
from . import report as rep
from .clips import parse_resolution, write_clip
from .stages import (CpuClock, CudaStreamClock, Timer, TorchCudaClock, host_peak_bytes,
                     matmul_tflops, module_sections, release_memory, reset_host_peak, summarise,
                     vit_flops_per_frame)

#: Rows cover-bench knows, in the order they are measured (the baseline first).
BACKENDS: tuple[str, ...] = ("torch-fp32", "torch-fp16", "onnxruntime", "tensorrt")
BENCH_CODECS = ("h264", "hevc")

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- the clip

def clip_cache_dir() -> Path:
    """Generated clips live beside cover-fetch's cache, in ``bench-clips/``."""
    try:
        from cover_engine.runtime.fetch import cache_dir
    except ImportError:
        return Path.home() / ".cache" / "cover-engine" / "bench-clips"
    return cache_dir() / "bench-clips"


def bench_clip(resolution: str, frames: int, codec: str, log: Log) -> tuple[Path, bool]:
    """The cached synthetic clip for these settings, encoded on first use; (path, generated)."""
    width, height = parse_resolution(resolution)
    if codec in ("h264", "hevc") and (width % 2 or height % 2):
        raise InputError(f"resolution {width}x{height}: {codec} in yuv420p needs even sizes")
    path = clip_cache_dir() / f"synthetic-{width}x{height}-{frames}f-{codec}.mp4"
    if path.is_file():
        return path, False
    log(f"cover-bench: encoding a {frames}-frame {width}x{height} {codec} clip into {path} (once)")
    write_clip(path, width, height, frames, codec=codec)
    return path, True


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


# ----------------------------------------------------------------------------- backends

@dataclass
class Context:
    """What every backend row shares: the model, the device, the engines, the logger."""

    config: Any                      # ModelConfig
    device: str
    batch: int
    weights: Optional[Path]
    clip_weights: Optional[Path]
    engines: Optional[Path]
    threads: Optional[int]
    workdir: Path
    log: Log
    _model: Any = None
    _exports: dict = field(default_factory=dict)

    def model(self):
        """The float32 eval-mode COVER model (seeded random weights unless --weights), once."""
        if self._model is None:
            from ..export.backend_torch import build_model

            self._model, _ = build_model(self.config, weights=self.weights,
                                         clip_weights=self.clip_weights,
                                         random_weights=self.weights is None, seed=0)
        return self._model

    def drop_model(self) -> None:
        self._model = None
        release_memory()

    def engine_dir(self, precision: str, tensorrt: bool) -> Path:
        """``--engines``, or a fresh export of the benchmark model (video graphs only)."""
        if self.engines is not None:
            return self.engines
        key = (precision, tensorrt)
        if isinstance(self._exports.get(key), CoverError):
            raise self._exports[key]  # failed once already: do not pay for it twice
        if key not in self._exports:
            from ..export.onnx_export import export_all

            out = self.workdir / f"engines-{precision}"
            self.log(f"cover-bench: exporting {precision} ONNX graphs"
                     f"{' and TensorRT engines' if tensorrt else ''} into {out}")
            model = self.model().cpu()
            try:
                export_all(out, config=self.config, model=model, weights=self.weights,
                           clip_weights=self.clip_weights, random_weights=self.weights is None,
                           precision=precision, modes=("video",), engines=tensorrt, check=False,
                           batch_opt=self.batch, batch_max=self.batch,
                           log=lambda msg: self.log(f"  {msg}"))
            except CoverError as exc:
                self._exports[key] = exc
                raise
            self._exports[key] = out
        return self._exports[key]


class Probe:
    """A backend plus how its model stages are timed.

    ``sections(timer)`` brackets one ``backend.run`` so that named model stages are recorded
    inside it; ``extra(views, timer)`` is a separate pass for backends whose stages cannot be
    seen inside ``run``. ``serial``: concurrent callers must take turns on ``run``.
    """

    clock: Any = CpuClock()
    stages_inside_run = True
    serial = False
    note = ""

    def __init__(self, backend, device: str):
        self.backend = backend
        self.device = device

    def sections(self, timer: Timer):
        return contextlib.nullcontext()

    def extra(self, views: Mapping[str, np.ndarray], timer: Timer) -> None:
        pass

    def gpu_memory(self, before: Optional[int]) -> tuple[Optional[int], str]:
        """GPU memory this backend used and how that was measured; ``before`` is the device's
        memory in use before the backend was built."""
        return _device_delta(self.device, before)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


class TorchProbe(Probe):
    """Forward hooks on the model's own modules: backbones, and gates with heads."""

    note = "model stages timed by hooks on the model's modules"

    def __init__(self, backend, device: str):
        super().__init__(backend, device)
        import torch

        self._torch = torch
        self.cuda = backend.device.type == "cuda"
        self.clock = TorchCudaClock(backend.device) if self.cuda else CpuClock()
        m = backend.model
        self.modules = {
            "semantic": [m.semantic_backbone],
            "technical": [m.technical_backbone],
            "aesthetic": [m.aesthetic_backbone],
            "gates+heads": [m.smtc_gate_tech, m.smtc_gate_aesc, m.semantic_head,
                            m.technical_head, m.aesthetic_head],
        }
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(backend.device)

    def sections(self, timer: Timer):
        return module_sections(timer, self.modules)

    def gpu_memory(self, before: Optional[int]) -> tuple[Optional[int], str]:
        if not self.cuda:
            return None, ""
        return (int(self._torch.cuda.max_memory_allocated(self.backend.device)),
                "torch.cuda.max_memory_allocated (peak of torch's allocator)")


class OrtProbe(Probe):
    """Each branch graph's ``session.run`` (ONNX Runtime returns host arrays: synchronous)."""

    note = "each branch graph includes its gate and head"

    def __init__(self, backend, device: str):
        super().__init__(backend, device)
        self.timer: Optional[Timer] = None
        backend.around_graph = lambda branch: (self.timer.section(branch) if self.timer
                                               else contextlib.nullcontext())

    @contextlib.contextmanager
    def sections(self, timer: Timer) -> Iterator[None]:
        self.timer = timer
        try:
            yield
        finally:
            self.timer = None


class TrtProbe(Probe):
    """Per-branch engine times from a separate pass on one of the backend's own streams.

    ``run`` replays the three engines as one CUDA graph, with nothing to time in between, so
    after each measured run the three engines are enqueued once more, one by one, with
    cuda-python events on the slot's stream around each.
    """

    stages_inside_run = False
    serial = True  # its in-flight slots are handed out without a lock
    note = ("branch times from a separate per-engine pass (each engine includes its gate and "
            "head); concurrent callers take turns on the GPU")

    def __init__(self, backend, device: str):
        super().__init__(backend, device)
        self.clock = CudaStreamClock()

    def extra(self, views: Mapping[str, np.ndarray], timer: Timer) -> None:
        from cover_engine.runtime.errors import EngineError

        backend = self.backend
        mode = backend.mode_for(views)
        slot = backend.acquire(int(views[BRANCHES[0]].shape[0]), mode)
        slot.upload(views)
        contexts = slot.contexts_for(mode)
        timer.clock.stream = slot.stream
        for branch in BRANCHES:
            with timer.section(branch):
                if not contexts[branch].execute_async_v3(slot.stream.handle):
                    raise EngineError(f"TensorRT failed to enqueue the {mode}/{branch} engine")
        slot.stream.synchronize()


def _device_used(device: str) -> Optional[int]:
    if not device.startswith("cuda"):
        return None
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return total - free


def _device_delta(device: str, before: Optional[int]) -> tuple[Optional[int], str]:
    after = _device_used(device)
    if after is None or before is None:
        return None, ""
    return (max(after - before, 0),
            "device memory in use after the runs minus before the backend was built "
            "(cudaMemGetInfo, whole device; not a peak)")


def skip_reason(name: str, ctx: Context) -> Optional[str]:
    """Why row ``name`` cannot run here (checked before anything is exported), or None."""
    cuda = ctx.device.startswith("cuda")
    if name == "torch-fp16" and not cuda:
        return ("fp16 runs on a CUDA device (on a CPU torch only emulates it); "
                f"device is {ctx.device}")
    if name == "onnxruntime" and cuda:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); "
                    "run with --device cpu to measure it on the CPU")
    if name == "tensorrt":
        if not cuda:
            return f"TensorRT runs on a CUDA GPU; device is {ctx.device}"
        if not importable("tensorrt"):
            return "the tensorrt package is not installed (pip install 'cover-engine[trt]')"
    if name in ("onnxruntime", "tensorrt") and ctx.engines is not None:
        from cover_engine.runtime.engines.manifest import load_manifest

        manifest = load_manifest(ctx.engines)
        if manifest.model != ctx.config.to_dict():
            return f"{ctx.engines} was exported for another model config than the benchmark's"
        if name == "tensorrt" and not manifest.engines:
            return f"{ctx.engines} holds no TensorRT engines (cover-export --engine builds them)"
    return None


def make_probe(name: str, ctx: Context) -> Probe:
    """Build one row's backend (call :func:`skip_reason` first)."""
    if name in ("torch-fp32", "torch-fp16"):
        from ..export.backend_torch import TorchBackend

        return TorchProbe(TorchBackend(config=ctx.config, device=ctx.device,
                                       precision=name.split("-")[1], model=ctx.model()),
                          ctx.device)
    if name == "onnxruntime":
        from cover_engine.runtime.engines.ort_runner import OrtBackend

        return OrtProbe(OrtBackend(ctx.engine_dir("fp32", tensorrt=False), device=ctx.device,
                                   threads=ctx.threads), ctx.device)
    if name == "tensorrt":
        from cover_engine.runtime.engines.trt_runner import TrtBackend

        return TrtProbe(TrtBackend(ctx.engine_dir("fp16", tensorrt=True), device=ctx.device,
                                   log=ctx.log), ctx.device)
    raise CoverError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")


# ----------------------------------------------------------------------------- measuring

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
    gpu_before = _device_used(ctx.device)
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


# ----------------------------------------------------------------------------- machine facts

def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _total_memory(),
        # Other work on the machine skews every figure; the load says how busy it was before
        # the benchmark started (run_bench adds the figure after it).
        "load_average_1m_before": _load_average(),
        "gpu": None,
    }
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                       "memory_bytes": int(props.total_memory), "cuda": torch.version.cuda}
    return info


def versions() -> dict[str, Optional[str]]:
    import av

    out: dict[str, Optional[str]] = {"cover-engine": __version__,
                                     "python": platform.python_version(),
                                     "numpy": np.__version__, "av": av.__version__}
    libavcodec = av.library_versions.get("libavcodec")
    out["libavcodec"] = ".".join(map(str, libavcodec)) if libavcodec else None
    for module in ("torch", "onnxruntime", "onnx", "tensorrt"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = None
    return out


def _load_average() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but torch sees no CUDA GPU here")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device!r}: use auto, cpu or cuda[:N]")
    return device


def parse_backends(text: Optional[str]) -> list[str]:
    if not text:
        return list(BACKENDS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise InputError(f"--backends: unknown {', '.join(unknown) or '(none given)'} "
                         f"(choose from {', '.join(BACKENDS)})")
    return sorted(set(names), key=BACKENDS.index)


def run_bench(*, input_path: Optional[Path], resolution: str, frames: int, codec: str,
              backends: list[str], runs: int, warmup: int, batch: int, concurrency: int,
              device: str, config: Optional[Path], weights: Optional[Path],
              clip_weights: Optional[Path], engines: Optional[Path],
              threads: Optional[int] = None, command: str = "",
              log: Log = print) -> dict[str, Any]:
    """Everything ``cover-bench`` does but printing: returns the report dictionary."""
    import torch

    from ..export.backend_torch import resolve_config

    if threads:
        torch.set_num_threads(threads)
    cfg = resolve_config(config)
    if weights is not None:  # fail now, not after the first rows
        from ..export.config import ModelConfig
        from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_WEIGHTS
        from cover_engine.runtime.fetch import resolve_weights

        official = cfg == ModelConfig.official()
        weights = resolve_weights(COVER_WEIGHTS, weights, official=official)
        clip_weights = resolve_weights(CLIP_WEIGHTS, clip_weights, official=official)
    device = _resolve_device(device)
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
    machine["load_average_1m_after"] = _load_average()
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


def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True

