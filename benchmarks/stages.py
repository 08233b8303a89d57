"""What ``cover-bench`` measures with: named intervals per run and their min / p50 / p95, peak
memory, the semantic branch's FLOPs and a reference matmul rate.

Two kinds of clock, because a GPU call returns as soon as its kernels are *queued*:
``perf_counter`` around it measures the launch, not the work. On a CPU every call is
synchronous, so ``perf_counter`` is exact. On a GPU an interval is a pair of events recorded on
the stream the work runs on, read back only once the run has finished; a backend that owns its
CUDA stream (TensorRT) is timed with events on that stream (:class:`CudaStreamClock`).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np


class Clock(Protocol):
    """Marks points in the work's timeline and measures between two of them."""

    #: How intervals are measured, for the report (``perf_counter``, ``cuda-events``, ...).
    name: str

    def mark(self) -> Any:
        """A point in the timeline, taken now (CPU) or enqueued now (GPU stream)."""
        ...

    def elapsed(self, start: Any, end: Any) -> float:
        """Seconds from ``start`` to ``end``; may wait for the device to reach ``end``."""
        ...


class CpuClock:
    """Host wall-clock time: exact for synchronous work."""

    name = "perf_counter"

    def mark(self) -> float:
        return time.perf_counter()

    def elapsed(self, start: float, end: float) -> float:
        return end - start


class TorchCudaClock:
    """CUDA events recorded on torch's current stream of ``device``."""

    name = "cuda-events"

    def __init__(self, device: Any = None):
        import torch

        self._torch = torch
        self.device = torch.device(device if device is not None else "cuda")

    def mark(self):
        event = self._torch.cuda.Event(enable_timing=True)
        event.record(self._torch.cuda.current_stream(self.device))
        return event

    def elapsed(self, start, end) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1e3


class CudaStreamClock:
    """cuda-python events (``runtime.gpu``) on a stream a backend owns, such as TensorRT's.

    ``stream`` may be changed between intervals (a backend that rotates its streams).
    """

    name = "cuda-events"

    def __init__(self, stream: Any = None):
        self.stream = stream

    def mark(self):
        from cover_engine.runtime.gpu import cuda as gpu

        return gpu.Event(timing=True).record(self.stream)

    def elapsed(self, start, end) -> float:
        end.synchronize()
        seconds = end.elapsed_ms(start) / 1e3
        start.close()
        end.close()
        return seconds


class Timer:
    """Named intervals grouped into runs; a name seen several times in one run is summed.

    Summing lets several modules share one stage (the three heads and two gates form
    ``gates+heads``). Device intervals are resolved in :meth:`end_run`, after the work, so timing
    never adds a synchronisation inside the measured code.
    """

    def __init__(self, clock: Optional[Clock] = None):
        self.clock: Clock = clock or CpuClock()
        self.runs: list[dict[str, float]] = []
        self._open: dict[str, list[Any]] = {}
        self._done: list[tuple[str, Any, Any]] = []

    def start(self, name: str) -> None:
        self._open.setdefault(name, []).append(self.clock.mark())

    def stop(self, name: str) -> None:
        if not self._open.get(name):
            raise RuntimeError(f"timer: stop({name!r}) without a matching start")
        start = self._open[name].pop()
        self._done.append((name, start, self.clock.mark()))

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def end_run(self) -> dict[str, float]:
        """Close the current run: resolve its intervals to seconds and keep them."""
        open_names = [n for n, marks in self._open.items() if marks]
        if open_names:
            raise RuntimeError(f"timer: run ended with open sections {open_names}")
        totals: dict[str, float] = {}
        for name, start, end in self._done:
            totals[name] = totals.get(name, 0.0) + self.clock.elapsed(start, end)
        self._done.clear()
        self.runs.append(totals)
        return totals

    def discard(self) -> None:
        """Forget everything recorded so far (after warm-up runs)."""
        self.runs.clear()
        self._open.clear()
        self._done.clear()


@dataclass(frozen=True)
class Stats:
    """Summary of one stage over the measured runs, in seconds."""

    min: float
    p50: float
    p95: float
    mean: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        """Percentiles interpolate linearly between samples (numpy's default)."""
        if len(samples) == 0:
            raise ValueError("no samples to summarise")
        a = np.asarray(samples, dtype=np.float64)
        return cls(min=float(a.min()), p50=float(np.percentile(a, 50)),
                   p95=float(np.percentile(a, 95)), mean=float(a.mean()), n=int(a.size))

    def to_ms(self) -> dict[str, float]:
        return {"min_ms": self.min * 1e3, "p50_ms": self.p50 * 1e3, "p95_ms": self.p95 * 1e3,
                "mean_ms": self.mean * 1e3, "n": self.n}


def summarise(runs: Iterable[Mapping[str, float]]) -> dict[str, Stats]:
    """Per stage, :class:`Stats` over the runs in which it appears (first-seen order)."""
    samples: dict[str, list[float]] = {}
    for run in runs:
        for name, seconds in run.items():
            samples.setdefault(name, []).append(seconds)
    return {name: Stats.of(values) for name, values in samples.items()}


@contextlib.contextmanager
def module_sections(timer: Timer, stages: Mapping[str, Sequence[Any]]) -> Iterator[None]:
    """Time torch modules inside an unmodified forward: ``{stage: [module, ...]}``.

    Forward pre-hooks and hooks bracket each module call, so the stages are the model's own
    calls, not a re-implementation of its forward. Hooks are removed on exit.
    """
    handles = []
    try:
        for name, modules in stages.items():
            for module in modules:
                handles.append(module.register_forward_pre_hook(
                    lambda _m, _args, name=name: timer.start(name)))
                handles.append(module.register_forward_hook(
                    lambda _m, _args, _out, name=name: timer.stop(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


# --- memory -------------------------------------------------------------------------------------

def reset_host_peak() -> bool:
    """Reset the process's peak resident size (Linux ``clear_refs``); False where impossible.

    Without a reset the peak covers the whole process lifetime, so per-backend figures would
    include every earlier backend.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Collect garbage and give freed heap back to the OS (glibc), so a new peak starts low."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def host_peak_bytes() -> int:
    """Peak resident set size of this process (since the last successful reset, on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


# --- compute ------------------------------------------------------------------------------------

def vit_flops_per_frame(width: int, layers: int, patch_size: int, output_dim: int,
                        height: int, image_width: int, mlp_ratio: int = 4) -> int:
    """Multiply-add FLOPs (2 per MAC) of one frame through a CLIP ViT image tower.

    Counts what dominates and what ``torch.utils.flop_counter`` counts: the patch-embedding
    convolution, per layer the QKV / output projections, the two MLP matmuls and the two attention
    matmuls (QK^T and AV over ``patches + 1`` tokens), and the final projection of the class
    token. Norms, softmax and activations are left out. COVER's semantic branch has no
    positional embedding, which costs nothing either way.
    """
    patches = (height // patch_size) * (image_width // patch_size)
    tokens = patches + 1
    embed = 2 * patches * width * 3 * patch_size * patch_size
    linear = 2 * tokens * width * (3 * width + width + 2 * mlp_ratio * width)
    attention = 2 * 2 * tokens * tokens * width
    return embed + layers * (linear + attention) + 2 * width * output_dim


def matmul_tflops(device: Any = "cpu", n: Optional[int] = None, reps: int = 5) -> dict[str, Any]:
    """Best-of-``reps`` dense matmul rate measured here: fp16 on a GPU, fp32 on a CPU.

    This is the practical ceiling a model's achieved rate is compared with, measured in the
    same run rather than taken from a data sheet.
    """
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    n = n or (8192 if cuda else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timer = Timer(TorchCudaClock(device) if cuda else CpuClock())
    for _ in range(2):
        torch.matmul(a, b)
    for _ in range(reps):
        with timer.section("matmul"):
            torch.matmul(a, b)
        timer.end_run()
    best = min(run["matmul"] for run in timer.runs)
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "n": n,
            "tflops": 2 * n ** 3 / best / 1e12, "clock": timer.clock.name}
