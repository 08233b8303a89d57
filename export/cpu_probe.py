"""Which backend ``auto`` runs on a CPU: torch or ONNX Runtime, decided by measuring both here.

Neither is the faster one everywhere: at official size ONNX Runtime took 0.56x torch's time per
clip on one 2-vCPU machine and 1.08x on another (BENCHMARKS.md, "Which backend auto picks on a
CPU"). The semantic branch is more than 90% of a clip at official size, so the probe times one
of its transformer blocks at
the model's real shapes, in torch and as the fp32 export would run it in ONNX Runtime (head
chunks and session settings included), and picks the faster. It takes seconds, not a clip's
minutes, and the answer is cached per machine, library versions and model shape in
``$COVER_HOME/probes/``: it is measured once.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

from cover_engine import __version__
from cover_engine.runtime.constants import ATTENTION_HEAD_CHUNK
from cover_engine.runtime.durable import write_atomic
from cover_engine.runtime.errors import CoverError
from .config import ModelConfig, resolve_config

__all__ = ["PROBE_VERSION", "TORCH_MARGIN", "cpu_probe_key", "run_cpu_probe", "cpu_backend"]

PROBE_VERSION = 2
#: torch is picked only when its block is at least this much faster (ONNX Runtime needs no torch
#: at run time and is the engine-folder path, so a tie goes to it).
TORCH_MARGIN = 0.95

Log = Callable[[str], None]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def block_shape(cfg: ModelConfig) -> tuple[int, int, int, int]:
    """(frames, tokens, width, heads) of one semantic transformer block at the model's view."""
    _, _, frames, h, w = cfg.inputs["semantic"]
    sem = cfg.semantic
    return frames, (h // sem.patch_size) * (w // sem.patch_size) + 1, sem.width, sem.heads


def _version(*dists: str) -> str:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_probe_key(cfg: ModelConfig) -> dict:
    """Everything the answer depends on: the machine, the libraries, the threads, the block's
    shape. Read without importing torch or ONNX Runtime (a second each), so that a cached
    answer costs ``cover-run`` nothing; torch's thread count is what ``OMP_NUM_THREADS`` and
    the CPUs this process may use make it."""
    return {"probe": PROBE_VERSION, "cover_engine": __version__, "cpu": _cpu_model(),
            "cpus": _cpus(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch": _version("torch"),
            "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
            "block": list(block_shape(cfg)), "head_chunk": ATTENTION_HEAD_CHUNK}


def _best_times(fns: dict, reps: int) -> dict:
    """Best time of each function over ``reps`` rounds, the functions interleaved in each
    round: on a shared machine a busy moment then slows both alike, and the best run is the
    closest to the machine's own speed. One unmeasured round first (allocation, threads)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def run_cpu_probe(cfg: ModelConfig, reps: int = 3) -> dict:
    """Seconds per block in torch and ONNX Runtime (best of ``reps`` interleaved rounds)."""
    import onnxruntime as ort
    import torch

    from cover_engine.runtime.engines.ort_runner import OrtSettings
    from .clip_vit import ResidualAttentionBlock
    from .graphs import _quiet_loggers as quiet_loggers
    from .graphs import attention_in_head_chunks

    frames, tokens, width, heads = block_shape(cfg)
    torch.manual_seed(0)
    block = ResidualAttentionBlock(width, heads).eval()
    x = torch.randn(frames, tokens, width)

    settings = OrtSettings.lean() if cfg == ModelConfig.official() else OrtSettings()
    with tempfile.TemporaryDirectory(prefix="cover-probe-") as tmp:
        path = Path(tmp) / "block.onnx"
        with torch.no_grad(), attention_in_head_chunks(block, ATTENTION_HEAD_CHUNK), \
                warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                quiet_loggers("torch.onnx", "onnxscript", "torch"):
            warnings.simplefilter("ignore")
            torch.onnx.export(block, (x,), str(path), dynamo=True, opset_version=18,
                              input_names=["x"], output_names=["y"], verbose=False)
        session = ort.InferenceSession(str(path), settings.session_options(),
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=settings.disabled_optimizers or None)
    feed = {"x": x.numpy()}
    run_options = settings.run_options()

    def run_torch():
        with torch.inference_mode():
            block(x)

    return {f"{k}_s": v for k, v in _best_times(
        {"torch": run_torch, "onnxruntime": lambda: session.run(None, feed, run_options)},
        reps).items()}


def _cache_file(key: dict) -> Path:
    from cover_engine.runtime.fetch import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "probes" / f"cpu-backend-{digest}.json"


def cpu_backend(config=None, *, log: Log = print, probe=run_cpu_probe) -> str:
    """``torch`` or ``onnxruntime``: the faster here for this model, measured once and cached."""
    cfg = resolve_config(config)
    key = cpu_probe_key(cfg)
    path = _cache_file(key)
    try:
        record = json.loads(path.read_text())
        if record.get("key") == key and record.get("choice") in ("torch", "onnxruntime"):
            return record["choice"]
    except (OSError, ValueError, AttributeError):
        pass  # absent or unreadable: measure again
    log("cover: timing torch against ONNX Runtime on this CPU, once (cached in "
        f"{path.parent})")
    times = probe(cfg)
    choice = "torch" if times["torch_s"] < TORCH_MARGIN * times["onnxruntime_s"] else "onnxruntime"
    record = {"key": key, **times, "choice": choice,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=1).encode())
    except (OSError, CoverError):
        pass  # a read-only cache: the answer is still right, just measured again next time
    log(f"cover: one semantic block takes {1000 * times['torch_s']:.1f} ms in torch, "
        f"{1000 * times['onnxruntime_s']:.1f} ms in ONNX Runtime: auto runs {choice} on this CPU")
    return choice
