"""From a file to COVER scores: choose a backend, make the views, run, form the scores.

:func:`make_scorer` is the entry point of ``cover-run``, ``cover-eval`` and the package root's
API. It returns a scorer -- ``score(path) -> FileScore``, ``close()``, usable in ``with`` --
either :class:`Scorer` (views made on the CPU, any backend) or, for TensorRT, the GPU pipeline
(:class:`~cover_engine.runtime.gpu.pipeline.GpuPipeline`). How maps become scores is
:func:`~cover_engine.runtime.results.file_score`, shared by both.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from cover_engine.runtime.constants import COLOUR_MODES, DEFAULT_COLOUR
from cover_engine.runtime.engines.base import Backend, DeviceBackend, backend_class
from cover_engine.runtime.results import FileScore, FileScorer, file_score
from cover_engine.runtime.errors import CoverError
from cover_engine.runtime.views.assemble import load_views

__all__ = ["Scorer", "make_scorer", "make_backend", "ensure_cached_engines", "cached_engine_dir"]


class Scorer:
    """Scores one file at a time with a backend; ``clips`` sampled clips form one batch."""

    def __init__(self, backend: Backend, *, seed: Optional[int] = None, clips: int = 1,
                 colour: str = DEFAULT_COLOUR):
        if clips < 1:
            raise ValueError("clips must be at least 1")
        if colour not in COLOUR_MODES:
            raise ValueError(f"unknown colour conversion {colour!r}")
        self.backend = backend
        self.name = backend.name
        self.seed = seed
        self.clips = clips
        self.colour = colour

    def score(self, path) -> FileScore:
        start = time.perf_counter()
        views, info = load_views(path, self.backend.specs, seed=self.seed, clips=self.clips,
                                 colour=self.colour)
        return file_score(path, self.backend.run(views), info, self.name, start,
                          colour=self.colour)

    def score_many(self, paths: Iterable) -> Iterator[tuple[object, Union[FileScore, Exception]]]:
        """``(path, FileScore or the exception it raised)`` for each file, in order; a file
        that fails does not stop the others."""
        for path in paths:
            try:
                yield path, self.score(path)
            except Exception as exc:  # reported for this file; the batch goes on
                yield path, exc

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_backend(backend: str = "auto", *, engines=None, weights=None, clip_weights=None,
                 device: str = "cpu", precision: str = "fp32", torch_mode: str = "eager",
                 config=None, random_weights: bool = False, head=None,
                 threads: Optional[int] = None, log=print) -> Backend:
    """Build the named backend; ``auto`` picks TensorRT, then ONNX Runtime, from the engine folder.

    ``auto`` with no engine folder uses the cached export for these weights (and ``head``, a
    ``cover-train`` head file), exporting it once (which needs torch and the weights) when it is
    not there yet -- except on a CPU, where it first asks :func:`auto_backend` whether torch is
    the faster there. With an engine folder, ``head`` must be the one its manifest names.
    ``threads`` caps ONNX Runtime's CPU threads (one batch worker per core wants 1); torch
    follows ``OMP_NUM_THREADS``.
    """
    backend = auto_backend(backend, engines=engines, device=device, config=config, log=log,
                           weights=weights, clip_weights=clip_weights,
                           random_weights=random_weights, head=head)
    if torch_mode != "eager" and backend != "torch":
        raise CoverError(f"--torch-mode {torch_mode} applies to --backend torch, not {backend}")
    if backend == "torch":
        return backend_class("torch").from_mode(
            torch_mode, config=config, weights=weights, clip_weights=clip_weights, device=device,
            precision=precision, random_weights=random_weights, head=head, log=log)
    cached = dict(weights=weights, clip_weights=clip_weights, config=config,
                  random_weights=random_weights, head=head, log=log)
    if backend == "auto":
        engine_dir = Path(engines) if engines else ensure_cached_engines(**cached)
        backend = "tensorrt" if _tensorrt_usable(engine_dir) else "onnxruntime"
    elif engines is None:
        engine_dir = ensure_cached_engines(**cached)
    else:
        engine_dir = Path(engines)
    if head is not None:
        from cover_engine.runtime.engines.head import check_engine_head
        from cover_engine.runtime.engines.manifest import load_manifest

        check_engine_head(load_manifest(engine_dir, verify_files=False), engine_dir, head)
    cls = backend_class(backend)
    return cls(engine_dir, device=device if device.startswith("cuda") else "cuda", log=log) \
        if backend == "tensorrt" else cls(engine_dir, device=device, threads=threads)


def auto_backend(backend: str, *, engines=None, device: str = "cpu", config=None,
                 log=print, weights=None, clip_weights=None, random_weights: bool = False,
                 head=None) -> str:
    """``auto`` on a CPU without an engine folder: ``torch`` where a measured probe finds it the
    faster (``export.cpu_probe``, once per machine), else ``auto`` unchanged. Anything else --
    another backend, a GPU, engines handed over, no torch installed -- is returned as given.

    Missing weights fail here, before the probe's minute: either answer needs them (torch to
    load, ONNX Runtime to export), unless the export is cached already."""
    if backend != "auto" or engines is not None or str(device) != "cpu":
        return backend
    if importlib.util.find_spec("torch") is None:
        return backend
    if not random_weights and not (cached_engine_dir(
            weights=weights, clip_weights=clip_weights, config=config,
            head=head) / "manifest.json").is_file():
        _require_weights(weights, clip_weights, config)
    from cover_engine.export.cpu_probe import cpu_backend

    return "torch" if cpu_backend(config, log=log) == "torch" else backend


def _tensorrt_usable(engine_dir: Path) -> bool:
    """True when TensorRT imports and the folder holds engines built for it."""
    from cover_engine.runtime.engines.manifest import load_manifest
    from cover_engine.runtime.engines.trt_runner import import_tensorrt

    if import_tensorrt(required=False) is None:
        return False

    return bool(load_manifest(engine_dir).engines)


def cached_engine_dir(*, weights=None, clip_weights=None, config=None,
                      random_weights: bool = False, head=None) -> Path:
    """Where the cached ONNX export for these settings (and head file) is or will be."""
    from cover_engine.runtime.engines.cache import engine_cache_name
    from cover_engine.runtime.engines.head import head_sha256
    from cover_engine.runtime.fetch import checked_cache_dir

    return checked_cache_dir() / "engines" / engine_cache_name(
        weights=weights, clip_weights=clip_weights, config=config, random_weights=random_weights,
        head_sha256=head_sha256(head) if head is not None else None)


def _require_weights(weights, clip_weights, config) -> None:
    """Both weight files, found and verified, or a WeightsError saying how to get them."""
    from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_WEIGHTS
    from cover_engine.runtime.fetch import resolve_weights

    official = config is None
    resolve_weights(COVER_WEIGHTS, weights, official=official)
    resolve_weights(CLIP_WEIGHTS, clip_weights, official=official)


def ensure_cached_engines(*, weights=None, clip_weights=None, config=None,
                          random_weights: bool = False, head=None, log=print) -> Path:
    """The cached ONNX export for these settings (and head file), exported now if missing."""
    from cover_engine.runtime.fetch import checked_cache_dir

    target = cached_engine_dir(weights=weights, clip_weights=clip_weights, config=config,
                               random_weights=random_weights, head=head)
    if (target / "manifest.json").is_file():
        return target
    if not random_weights:  # fail on missing weights before announcing an export
        _require_weights(weights, clip_weights, config)
    checked_cache_dir(write=True)  # before minutes of export, not after
    log(f"cover-run: no engines given; exporting ONNX graphs once into {target} "
        "(needs torch and the weights)")
    try:
        from cover_engine.export.onnx_export import export_all
    except ImportError as exc:
        from cover_engine.runtime.errors import EngineError

        raise EngineError(f"no engines at hand and the exporter cannot run here ({exc}); "
                          "run `cover-export` on a machine with torch, then "
                          "`cover-run --engines DIR`") from None
    export_all(target, weights=weights, clip_weights=clip_weights, config=config,
               precision="fp32", random_weights=random_weights, head=head, log=log)
    return target


def make_scorer(backend: str = "auto", *, engines=None, weights=None, clip_weights=None,
                device: str = "cpu", precision: str = "fp32", torch_mode: str = "eager",
                seed: Optional[int] = None,
                clips: int = 1, config=None, random_weights: bool = False, head=None,
                threads: Optional[int] = None, log=print,
                colour: str = DEFAULT_COLOUR) -> FileScorer:
    """A scorer over :func:`make_backend`: the GPU pipeline for TensorRT, else :class:`Scorer`;
    ``colour`` is the YUV -> RGB conversion (``constants.COLOUR_MODES``); ``head`` a
    ``cover-train`` head file."""
    chosen = make_backend(backend, engines=engines, weights=weights, clip_weights=clip_weights,
                          device=device, precision=precision, torch_mode=torch_mode,
                          config=config, random_weights=random_weights, head=head,
                          threads=threads, log=log)
    if isinstance(chosen, DeviceBackend):
        from cover_engine.runtime.gpu.pipeline import GpuPipeline

        return GpuPipeline(chosen, seed=seed, clips=clips, log=log, colour=colour)
    return Scorer(chosen, seed=seed, clips=clips, colour=colour)
