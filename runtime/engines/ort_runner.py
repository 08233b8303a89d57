"""``--backend onnxruntime``: runs an exported engine folder's ONNX graphs with ONNX Runtime.

Torch-free. The CPU execution provider is the default; with ``onnxruntime-gpu`` installed,
``device="cuda[:N]"`` runs on the CUDA provider, and ``providers="tensorrt"`` puts ONNX
Runtime's TensorRT provider in front of it (it builds its own engines on first use and caches
them beside the graphs). Everything is checked before the first score: the manifest and every
file's checksum (:func:`~cover_engine.runtime.engines.manifest.load_manifest`), then that each graph
is the mode and branch the manifest says (its metadata, :mod:`.identity`), and its real inputs and
outputs against the manifest.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

from cover_engine.runtime.constants import BRANCHES, ViewSpec
from cover_engine.runtime.engines.base import FolderBackend, check_views
from cover_engine.runtime.engines.identity import check_graph_metadata
from cover_engine.runtime.engines.manifest import GraphEntry, Manifest, check_io, load_manifest
from cover_engine.runtime.errors import EngineError

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
_SHORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}


def select_providers(device: str = "cpu", providers: Union[None, str, Sequence] = None,
                     *, available: Optional[Sequence[str]] = None,
                     cache_dir: Optional[Path] = None) -> list:
    """ONNX Runtime providers (with options) for a device or an explicit choice.

    ``providers`` may be a list as ONNX Runtime takes it, or ``"cpu"``, ``"cuda"`` or
    ``"tensorrt"`` (TensorRT, then CUDA, then CPU for what TensorRT leaves out).
    """
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", device):
        raise EngineError(f"unknown device {device!r} for ONNX Runtime (use cpu, cuda or cuda:N)")
    available = list(ort.get_available_providers() if available is None else available)
    device_id = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
    if providers is None:
        providers = "cuda" if device.startswith("cuda") else "cpu"
    if not isinstance(providers, str):
        chosen = list(providers)
    elif providers in _SHORT_PROVIDERS:
        cuda = ("CUDAExecutionProvider", {"device_id": device_id})
        trt_options: dict = {"device_id": device_id}  # precision: the graph's own types
        if cache_dir is not None:
            trt_options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir),
                               trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
        chosen = {"cpu": [], "cuda": [cuda],
                  "tensorrt": [("TensorrtExecutionProvider", trt_options), cuda]}[providers]
        chosen.append("CPUExecutionProvider")
    else:
        raise EngineError(f"unknown ONNX Runtime provider {providers!r} "
                          f"(choose from {', '.join(_SHORT_PROVIDERS)})")
    for p in chosen:
        name = p[0] if isinstance(p, tuple) else p
        if name not in available:
            hint = " (install onnxruntime-gpu)" if name != "CPUExecutionProvider" else ""
            raise EngineError(f"ONNX Runtime provider {name} is not available here{hint}; "
                              f"available: {', '.join(available)}")
    return chosen


def _check_providers(requested: Sequence, active: Sequence[str], where: str) -> None:
    """The session runs on the first provider asked for. ONNX Runtime quietly drops a provider
    it cannot start (CUDA libraries missing, a CPU-only build) and runs on the CPU: refuse."""
    first = requested[0][0] if isinstance(requested[0], tuple) else requested[0]
    if first not in active:
        raise EngineError(f"{where}: ONNX Runtime could not start {first} (it would have run on "
                          f"{', '.join(active) or 'nothing'}); check the CUDA/cuDNN libraries "
                          "onnxruntime-gpu needs, or use --device cpu")


_OPT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


#: Engine folders whose graphs total more than this get :meth:`OrtSettings.lean` by default.
LEAN_ABOVE_BYTES = 256 * 1024 ** 2


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime session choices that trade host memory against speed.

    The field defaults are ONNX Runtime's own. :meth:`lean` keeps the official model's peak
    host memory under 6 GiB at nearly the same speed (BENCHMARKS.md, "ONNX Runtime memory":
    5.84 GiB and 209 s of CPU time per 1080p clip, against 9.46 GiB and 203 s). Why each
    setting (the figures in these points are from the exploratory ``bench.ort_memory`` runs
    that chose them, not recorded in BENCHMARKS.md):

    * ``fold_constants=False``: the export already folds what stays small; ONNX Runtime's
      folding would also broadcast the Swin's per-window biases into 1.7 GB of new weights
      (8.5 GB while folding, 25 s of loading).
    * ``shrink_arena=True``: each of the three sessions keeps its own arena, so their peaks
      add up (15 GiB) unless each hands its memory back after its run; the arena still reuses
      blocks inside a run, which is where the speed is (no arena at all: +20% time).
    * ``mem_pattern=False``: with shrinking, a pre-planned block per run buys nothing.

    For small models the trade goes the other way (folding saves a quarter of the reference-
    vector model's time and its memory does not matter), so :meth:`for_graphs` picks by size.
    """

    threads: Optional[int] = None    # intra-op threads; None: ONNX Runtime's default (all cores)
    optimization: str = "all"        # graph optimisation level: disabled | basic | extended | all
    arena: bool = True               # CPU memory arena (keeps freed blocks for reuse)
    mem_pattern: bool = True         # pre-planned activation buffers from the first run's shapes
    shrink_arena: bool = False       # hand the arena's memory back after every run
    prepack: bool = True             # MLAS weight prepacking (a packed copy of each MatMul weight)
    fold_constants: bool = True      # ONNX Runtime's ConstantFolding (stores what it folds)

    @classmethod
    def lean(cls, threads: Optional[int] = None) -> "OrtSettings":
        """Bounded host memory for large models (see the class docstring)."""
        return cls(threads=threads, mem_pattern=False, shrink_arena=True, fold_constants=False)

    @classmethod
    def for_graphs(cls, graph_bytes: int, threads: Optional[int] = None) -> "OrtSettings":
        """:meth:`lean` for graphs above :data:`LEAN_ABOVE_BYTES` in total, else the defaults."""
        return cls.lean(threads) if graph_bytes > LEAN_ABOVE_BYTES else cls(threads=threads)

    def session_options(self) -> "ort.SessionOptions":
        options = ort.SessionOptions()
        if self.optimization not in _OPT_LEVELS:
            raise EngineError(f"unknown graph optimisation level {self.optimization!r} "
                              f"(choose from {', '.join(_OPT_LEVELS)})")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   _OPT_LEVELS[self.optimization])
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.enable_cpu_mem_arena = self.arena
        options.enable_mem_pattern = self.mem_pattern
        if not self.prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return options

    @property
    def disabled_optimizers(self) -> list[str]:
        return [] if self.fold_constants else ["ConstantFolding"]

    def run_options(self) -> Optional["ort.RunOptions"]:
        if not (self.shrink_arena and self.arena):
            return None
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options


def graph_bytes(manifest: Manifest) -> int:
    """Size of the video graphs (and their external weights) of an engine folder."""
    return sum(g.file.bytes + (g.external_data.bytes if g.external_data else 0)
               for g in manifest.graphs if g.mode == manifest.modes[0])


class OrtBackend(FolderBackend):
    """The three graphs of an engine folder as one backend: ``run(views) -> score maps``.

    Graphs are loaded per mode (video clips, single images) on first use; a view set is routed to
    the mode whose graph input shapes it matches.
    """

    def __init__(self, engine_dir: Union[str, Path], providers: Union[None, str, Sequence] = None,
                 *, device: str = "cpu", threads: Optional[int] = None,
                 settings: Optional[OrtSettings] = None):
        self.engine_dir = Path(engine_dir)
        self.manifest: Manifest = load_manifest(self.engine_dir)
        self.providers = select_providers(device, providers, cache_dir=self.engine_dir / "ort-trt")
        self.name = "onnxruntime" if self.manifest.precision == "fp32" else \
            f"onnxruntime-{self.manifest.precision}"
        self.specs: dict[str, ViewSpec] = self.manifest.specs
        settings = settings or OrtSettings.for_graphs(graph_bytes(self.manifest))
        if threads:
            settings = replace(settings, threads=threads)
        self.settings = settings
        self._options = settings.session_options()
        self._run_options = settings.run_options()
        self._sessions: dict[str, dict[str, ort.InferenceSession]] = {}
        #: Optional ``branch -> context manager`` wrapped around each graph's run (for timing).
        self.around_graph: Optional[Callable[[str], ContextManager]] = None
        self._session_set(self.manifest.modes[0])  # load and check the video graphs now

    def _session_set(self, mode: str) -> dict[str, ort.InferenceSession]:
        if mode not in self._sessions:
            self._sessions[mode] = {b: self._open(self.manifest.graph(mode, b)) for b in BRANCHES}
        return self._sessions[mode]

    def _open(self, graph: GraphEntry) -> ort.InferenceSession:
        path = self.engine_dir / graph.file.path
        try:
            session = ort.InferenceSession(str(path), sess_options=self._options,
                                           providers=self.providers,
                                           disabled_optimizers=self.settings.disabled_optimizers
                                           or None)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"{path}: ONNX Runtime cannot load it: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        _check_providers(self.providers, session.get_providers(), str(path))
        check_graph_metadata(graph, session.get_modelmeta().custom_metadata_map, str(path))

        def signature(tensors):
            return [(t.name, t.shape, _ORT_DTYPES.get(t.type, t.type)) for t in tensors]

        check_io(graph, signature(session.get_inputs()), signature(session.get_outputs()),
                 str(path))
        return session

    def run(self, views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_views(views)
        mode = self.mode_for(views)
        sessions = self._session_set(mode)
        maps: dict[str, np.ndarray] = {}
        produced: dict[str, np.ndarray] = {}
        for branch in BRANCHES:  # semantic first: its sem_feats feed the other two
            graph = self.manifest.graph(mode, branch)
            feed = {}
            for t in graph.inputs:
                value = views[branch] if t.source == "view" else produced[t.source]
                feed[t.name] = np.ascontiguousarray(value, dtype=t.dtype)
            names = [t.name for t in graph.outputs]
            with self.around_graph(branch) if self.around_graph else contextlib.nullcontext():
                outputs = dict(zip(names, sessions[branch].run(names, feed, self._run_options)))
            for name, value in outputs.items():
                produced[f"{branch}:{name}"] = value
            maps[branch] = outputs["score_map"].astype(np.float32, copy=False)
        return maps

    def close(self) -> None:
        """Drop the ONNX Runtime sessions (their memory goes with them)."""
        self._sessions.clear()
