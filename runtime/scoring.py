"""From a file to COVER scores: views -> backend -> score maps -> branch and overall scores.

Scores are formed here, once, for every backend: a branch score is the mean of its score map,
overall is semantic + technical + aesthetic (upstream's ``fuse_results``); with ``clips > 1``
each branch score is averaged over the clips. Raw scores are unbounded and may be negative, as
upstream's are.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from cover_engine.runtime.engines.base import Backend, backend_class
from cover_engine.runtime.constants import BRANCHES, COLOUR_MODES, DEFAULT_COLOUR
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.results import FileScore
from cover_engine.runtime.views.assemble import load_views


def branch_scores(maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per batch item: each branch's mean score and the overall sum, as float64 arrays ``(B,)``."""
    scores = {b: maps[b].astype(np.float64).reshape(maps[b].shape[0], -1).mean(axis=1)
              for b in BRANCHES}
    scores["overall"] = scores["semantic"] + scores["technical"] + scores["aesthetic"]
    return scores


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


def file_score(path, maps: Mapping[str, np.ndarray], info, backend: str,
               started: float, colour: str = DEFAULT_COLOUR) -> FileScore:
    """The :class:`FileScore` of one file from its score maps (clip scores averaged).

    A NaN or infinite score is never reported: the file fails with :class:`InputError` (the
    batch goes on), whatever made the model overflow (the input, or weights at their limits).
    """
    mean = {k: float(v.mean()) for k, v in branch_scores(maps).items()}
    bad = [f"{k} = {v}" for k, v in mean.items() if not math.isfinite(v)]
    if bad:
        raise InputError(f"{path}: the model gave a non-finite score ({', '.join(bad)}); "
                         "not reported")
    return FileScore(path=str(path), semantic=mean["semantic"], technical=mean["technical"],
                     aesthetic=mean["aesthetic"], overall=mean["overall"],
                     frames=int(info.num_frames), resolution=f"{info.width}x{info.height}",
                     backend=backend, seconds=time.perf_counter() - started, colour=colour)


def make_backend(backend: str = "auto", *, engines=None, weights=None, clip_weights=None,
                 device: str = "cpu", precision: str = "fp32", config=None,
                 random_weights: bool = False, log=print) -> Backend:
    """Build the named backend; ``auto`` picks TensorRT, then ONNX Runtime, from the engine folder.

    ``auto`` with no engine folder uses the cached export for these weights, exporting it once
    (which needs torch and the weights) when it is not there yet.
    """
    if backend == "torch":
        return backend_class("torch")(config=config, weights=weights, clip_weights=clip_weights,
                                      device=device, precision=precision,
                                      random_weights=random_weights)
    if backend == "auto":
        engine_dir = Path(engines) if engines else ensure_cached_engines(
            weights=weights, clip_weights=clip_weights, config=config,
            random_weights=random_weights, log=log)
        backend = "tensorrt" if _tensorrt_usable(engine_dir) else "onnxruntime"
    elif engines is None:
        engine_dir = ensure_cached_engines(weights=weights, clip_weights=clip_weights,
                                           config=config, random_weights=random_weights, log=log)
    else:
        engine_dir = Path(engines)
    cls = backend_class(backend)
    return cls(engine_dir, device=device if device.startswith("cuda") else "cuda", log=log) \
        if backend == "tensorrt" else cls(engine_dir, device=device)


def _tensorrt_usable(engine_dir: Path) -> bool:
    """True when TensorRT imports and the folder holds engines built for it."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    from cover_engine.runtime.engines.manifest import load_manifest

    return bool(load_manifest(engine_dir).engines)


def ensure_cached_engines(*, weights=None, clip_weights=None, config=None,
                          random_weights: bool = False, log=print) -> Path:
    """The cached ONNX export for these settings, exported now if missing."""
    from cover_engine.runtime.fetch import checked_cache_dir
    from cover_engine.runtime.engines.cache import engine_cache_name

    target = checked_cache_dir() / "engines" / engine_cache_name(weights=weights, clip_weights=clip_weights,
                                                         config=config,
                                                         random_weights=random_weights)
    if (target / "manifest.json").is_file():
        return target
    if not random_weights:  # fail on missing weights before announcing an export
        from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_WEIGHTS
        from cover_engine.runtime.fetch import resolve_weights

        official = config is None
        resolve_weights(COVER_WEIGHTS, weights, official=official)
        resolve_weights(CLIP_WEIGHTS, clip_weights, official=official)
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
               precision="fp32", random_weights=random_weights, log=log)
    return target


def make_scorer(backend: str = "auto", *, engines=None, weights=None, clip_weights=None,
                device: str = "cpu", precision: str = "fp32", seed: Optional[int] = None,
                clips: int = 1, config=None, random_weights: bool = False, log=print,
                colour: str = DEFAULT_COLOUR) -> Scorer:
    """A :class:`Scorer` over :func:`make_backend` (the entry point for cover-run and cover-eval);
    ``colour`` is the YUV -> RGB conversion (``constants.COLOUR_MODES``)."""
    chosen = make_backend(backend, engines=engines, weights=weights, clip_weights=clip_weights,
                          device=device, precision=precision, config=config,
                          random_weights=random_weights, log=log)
    if chosen.name.startswith("tensorrt"):
        return GpuScorer(chosen, seed=seed, clips=clips, log=log, colour=colour)
    return Scorer(chosen, seed=seed, clips=clips, colour=colour)


class GpuScorer:
    """The GPU path: NVDEC decoding and the view kernels feeding TensorRT (see ``gpu_views``)."""

    def __init__(self, backend: Backend, *, seed: Optional[int] = None, clips: int = 1, log=print,
                 colour: str = DEFAULT_COLOUR):
        from cover_engine.runtime.gpu.pipeline import GpuPipeline

        self.pipeline = GpuPipeline(backend, log=log)
        self.name = backend.name
        self.seed = seed
        self.clips = clips
        self.colour = colour

    def score(self, path) -> FileScore:
        return self.pipeline.score(path, seed=self.seed, clips=self.clips, colour=self.colour)

    def score_many(self, paths: Iterable) -> Iterator[tuple[object, Union[FileScore, Exception]]]:
        """As :meth:`Scorer.score_many`, decoding each file while the one before is inferred."""
        return self.pipeline.score_many(paths, seed=self.seed, clips=self.clips,
                                        colour=self.colour)
