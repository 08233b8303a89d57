"""The one interface every inference backend implements, and the factory that picks one.

A backend takes the three normalised views of a batch and returns the three score maps. Scores
are formed from the maps in one place (``runtime.scoring``), so every backend is compared on the
same footing. Backends that need torch live in ``cover_engine.export`` and are imported lazily:
this module, like all of ``runtime``, must import without torch.
"""
from __future__ import annotations

import importlib
from typing import Mapping, Optional, Protocol

import numpy as np

from cover_engine.runtime.constants import ViewSpec
from cover_engine.runtime.errors import CoverError

#: name -> "module:Class"; modules are imported only when the backend is asked for.
BACKENDS: dict[str, str] = {
    "torch": "cover_engine.export.backend_torch:TorchBackend",
    "onnxruntime": "cover_engine.runtime.engines.ort_runner:OrtBackend",
    "tensorrt": "cover_engine.runtime.engines.trt_runner:TrtBackend",
}


class Backend(Protocol):
    """What the scoring pipeline needs from an inference backend."""

    #: Short name shown in reports (``torch``, ``onnxruntime``, ``tensorrt``).
    name: str
    #: The view settings this backend's model expects, by branch name.
    specs: Mapping[str, ViewSpec]

    def run(self, views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score maps ``(B, 1, T', h, w)`` float32 for views ``(B, 3, T, H, W)`` float32."""
        ...


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

