"""The contract every inference backend honours, and the factory that picks one.

A backend takes the three normalised views of a batch and returns the three score maps. Scores
are formed from the maps in one place (:func:`cover_engine.runtime.results.branch_scores`), so
every backend is compared on the same footing.

What callers may use, on every backend (:class:`Backend`):

* ``name``, ``specs`` -- report name, and the view settings its model expects, by branch;
* ``run(views) -> maps`` -- synchronous;
* ``submit(views) -> Pending`` -- returns at once where the backend can overlap work (TensorRT),
  else it runs first and hands back a finished :class:`Ready`;
* ``close()``, and ``with backend: ...`` -- release models, sessions, device memory.

Backends that run an engine folder (:class:`FolderBackend`: ONNX Runtime, TensorRT) also choose
the graph set a view set needs (``mode_for``, written once here). A :class:`DeviceBackend`
(TensorRT) lets the GPU path write views straight into its input buffers: ``acquire`` a slot,
fill its view buffers on the slot's stream, ``enqueue`` it.

Backends that need torch live in ``cover_engine.export`` and are imported lazily: this module,
like all of ``runtime``, imports without torch.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from cover_engine.runtime.constants import BRANCHES, ViewSpec
from cover_engine.runtime.engines.manifest import MANIFEST_FILE, Manifest
from cover_engine.runtime.errors import CoverError, InputError

__all__ = ["BACKENDS", "Pending", "Ready", "Backend", "FolderBackend", "DeviceBackend",
           "check_views", "backend_class"]

#: name -> "module:Class"; modules are imported only when the backend is asked for.
BACKENDS: dict[str, str] = {
    "torch": "cover_engine.export.backend_torch:TorchBackend",
    "onnxruntime": "cover_engine.runtime.engines.ort_runner:OrtBackend",
    "tensorrt": "cover_engine.runtime.engines.trt_runner:TrtBackend",
}

Maps = dict[str, np.ndarray]


class Pending(Protocol):
    """Score maps on their way: ``result()`` waits for them."""

    def done(self) -> bool: ...

    def result(self) -> Maps: ...


class Ready:
    """A :class:`Pending` that was finished when it was made (synchronous backends)."""

    def __init__(self, maps: Maps):
        self._maps = maps

    def done(self) -> bool:
        return True

    def result(self) -> Maps:
        return self._maps


def check_views(views: Mapping[str, np.ndarray]) -> None:
    """Every branch has a view, or :class:`InputError` naming the missing ones."""
    missing = [b for b in BRANCHES if b not in views]
    if missing:
        raise InputError(f"views missing for branch(es) {', '.join(missing)}")


class Backend(ABC):
    """What the scoring pipeline needs from an inference backend (see the module docstring)."""

    #: Short name shown in reports (``torch``, ``onnxruntime``, ``tensorrt-fp16``, ...).
    name: str
    #: The view settings this backend's model expects, by branch name.
    specs: Mapping[str, ViewSpec]

    @abstractmethod
    def run(self, views: Mapping[str, np.ndarray]) -> Maps:
        """Score maps ``(B, 1, T', h, w)`` float32 for views ``(B, 3, T, H, W)`` float32."""

    def submit(self, views: Mapping[str, np.ndarray]) -> Pending:
        """Start scoring ``views``; this default runs them now."""
        return Ready(self.run(views))

    def close(self) -> None:
        """Release what the backend holds; it cannot run afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderBackend(Backend):
    """A backend running the graphs (or engines) of a ``cover-export`` folder."""

    engine_dir: Path
    manifest: Manifest

    def mode_for(self, views: Mapping[str, np.ndarray]) -> str:
        """The mode (``video``, ``image``) whose view inputs have these shapes, batch aside;
        :class:`InputError` saying what the folder takes otherwise."""
        modes = self.manifest.modes
        want = {m: {b: _view_input_shape(self.manifest, m, b) for b in BRANCHES} for m in modes}
        for mode in modes:
            if all(tuple(np.shape(views[b])[1:]) == tuple(want[mode][b][1:]) for b in BRANCHES):
                return mode
        got = {b: list(np.shape(views[b])) for b in BRANCHES}
        if "image" not in modes and all(np.shape(views[b])[2:3] == (1,) for b in BRANCHES):
            raise InputError(f"{self.engine_dir}: has no image graphs (exported with "
                             "--no-images); export again with images to score single images")
        shown = {m: {b: list(shape) for b, shape in s.items()} for m, s in want.items()}
        raise InputError(f"view shapes {got} match none of the engine's inputs {shown} "
                         f"({self.engine_dir / MANIFEST_FILE})")


class DeviceBackend(FolderBackend):
    """A backend whose inputs live in device memory that the GPU path may fill directly."""

    #: CUDA device the backend runs on.
    device_index: int

    @abstractmethod
    def acquire(self, batch: int, mode: str = "video"):
        """A free in-flight slot bound for ``batch`` items of ``mode``: ``slot.stream``,
        ``slot.view(branch)`` (device pointer, shape, dtype) and ``slot.hold(resource)``."""

    @abstractmethod
    def enqueue(self, slot) -> Pending:
        """Run the engines on the views written into ``slot`` (on ``slot.stream``)."""


def _view_input_shape(manifest: Manifest, mode: str, branch: str) -> tuple:
    graph = manifest.graph(mode, branch)
    return tuple(next(t for t in graph.inputs if t.source == "view").shape)


def backend_class(name: str) -> type:
    """Import and return the class registered for ``name`` (clear error if unknown/unavailable)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise CoverError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise CoverError(f"backend {name!r} is not available here: {exc}") from None
