"""The rows of ``cover-bench``: one backend each, with how its model stages are timed.

:class:`Context` holds what every row shares (the model, the device, the exports);
:func:`skip_reason` says why a row cannot run here before anything is exported;
:func:`make_probe` builds a row's backend wrapped in its :class:`Probe`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.errors import CoverError, EngineError, InputError
from .stages import CpuClock, CudaStreamClock, Timer, TorchCudaClock, module_sections, release_memory

__all__ = ["BACKENDS", "TORCH_ROWS", "Context", "Probe", "TorchProbe", "OrtProbe", "TrtProbe", "skip_reason",
           "make_probe", "parse_backends", "importable", "device_used"]

#: The torch rows: (precision, ``--torch-mode``) each. Rows other than fp32 eager need CUDA.
TORCH_ROWS: dict[str, tuple[str, str]] = {
    "torch-fp32": ("fp32", "eager"), "torch-fp16": ("fp16", "eager"),
    "torch-bf16": ("bf16", "eager"), "torch-fp16-compile": ("fp16", "compile"),
    "torch-fp16-graphs": ("fp16", "cuda-graphs"),
}
#: Rows cover-bench knows, in the order they are measured (the baseline first).
BACKENDS: tuple[str, ...] = (*TORCH_ROWS, "onnxruntime", "tensorrt")

Log = Callable[[str], None]


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
            from cover_engine.export.backend_torch import build_model

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
            from cover_engine.export.onnx_export import export_all

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
        self.backend.close()


class TorchProbe(Probe):
    """Forward hooks on the model's own modules: backbones, and gates with heads.

    With ``hooks=False`` (the compiled and CUDA-graph rows) only ``inference`` and
    ``end-to-end`` are timed: hooks would split torch.compile's graph, and a replayed CUDA
    graph runs no Python to call them.
    """

    note = "model stages timed by hooks on the model's modules"

    def __init__(self, backend, device: str, hooks: bool = True):
        super().__init__(backend, device)
        import torch

        self.hooks = hooks
        if not hooks:
            self.stages_inside_run = False
            self.note = ("inference and end-to-end only (stage hooks would change what is "
                         "measured: torch.compile's graph, or a CUDA graph replay)")

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
        if not self.hooks:
            return contextlib.nullcontext()
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


def device_used(device: str) -> Optional[int]:
    if not device.startswith("cuda"):
        return None
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return total - free


def _device_delta(device: str, before: Optional[int]) -> tuple[Optional[int], str]:
    after = device_used(device)
    if after is None or before is None:
        return None, ""
    return (max(after - before, 0),
            "device memory in use after the runs minus before the backend was built "
            "(cudaMemGetInfo, whole device; not a peak)")


def skip_reason(name: str, ctx: Context) -> Optional[str]:
    """Why row ``name`` cannot run here (checked before anything is exported), or None."""
    cuda = ctx.device.startswith("cuda")
    if name in TORCH_ROWS and name != "torch-fp32" and not cuda:
        precision, mode = TORCH_ROWS[name]
        return (f"{precision} {mode} runs on a CUDA device (on a CPU torch only emulates "
                f"reduced precision); device is {ctx.device}")
    if name == "onnxruntime" and cuda:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); "
                    "run with --device cpu to measure it on the CPU")
    if name == "tensorrt":
        if not cuda:
            return f"TensorRT runs on a CUDA GPU; device is {ctx.device}"
        if not importable("tensorrt"):
            return ("the tensorrt package is not installed (pip install "
                    "'cover-engine[gpu-cu12]' or '[gpu-cu13]')")
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
    if name in TORCH_ROWS:
        from cover_engine.export.backend_torch import TorchBackend

        precision, mode = TORCH_ROWS[name]
        backend = TorchBackend.from_mode(mode, config=ctx.config, device=ctx.device,
                                         precision=precision, model=ctx.model())
        return TorchProbe(backend, ctx.device, hooks=mode == "eager")
    if name == "onnxruntime":
        from cover_engine.runtime.engines.ort_runner import OrtBackend

        return OrtProbe(OrtBackend(ctx.engine_dir("fp32", tensorrt=False), device=ctx.device,
                                   threads=ctx.threads), ctx.device)
    if name == "tensorrt":
        from cover_engine.runtime.engines.trt_runner import TrtBackend

        return TrtProbe(TrtBackend(ctx.engine_dir("fp16", tensorrt=True), device=ctx.device,
                                   log=ctx.log), ctx.device)
    raise CoverError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")


def parse_backends(text: Optional[str]) -> list[str]:
    if not text:
        return list(BACKENDS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise InputError(f"--backends: unknown {', '.join(unknown) or '(none given)'} "
                         f"(choose from {', '.join(BACKENDS)})")
    return sorted(set(names), key=BACKENDS.index)


def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
