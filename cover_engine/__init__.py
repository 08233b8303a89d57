"""cover-engine: deployment engine for the COVER video quality model.

Score a file in three lines::

    from cover_engine import make_scorer

    with make_scorer() as scorer:                  # the best backend here, official weights
        print(scorer.score("clip.mp4").overall)    # a FileScore: semantic, technical, aesthetic, overall

``make_scorer`` takes what ``cover-run`` takes (``backend``, ``engines``, ``weights``,
``clip_weights``, ``config``, ``device``, ``seed``, ``clips``, ``colour``, ``random_weights``,
``log``); a scorer also has ``score_many(paths)``.
Everything the engine reports on purpose is a :class:`CoverError` (a bad file is an
:class:`InputError`, missing weights a :class:`WeightsError`, an unusable engine folder an
:class:`EngineError`). The scoring names are imported on first use, so ``import cover_engine``
stays cheap; nothing here imports torch unless the torch backend or an export is asked for.

The subpackages: ``cover_engine.runtime`` (torch-free: decoding, views, backends, scoring,
commands), ``cover_engine.export`` (the PyTorch model, ONNX export, TensorRT build),
``cover_engine.bench`` (benchmarks).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from cover_engine.runtime.errors import (CoverError, EngineError, GpuError,  # noqa: E402
                                         InputError, WeightsError)

__all__ = ["__version__", "make_scorer", "make_backend", "Scorer", "FileScore", "CoverError",
           "InputError", "WeightsError", "EngineError", "GpuError"]

#: Public names imported on first use: name -> module.
_LAZY = {
    "make_scorer": "cover_engine.runtime.scoring",
    "make_backend": "cover_engine.runtime.scoring",
    "Scorer": "cover_engine.runtime.scoring",
    "FileScore": "cover_engine.runtime.results",
}

if TYPE_CHECKING:  # pragma: no cover
    from cover_engine.runtime.results import FileScore
    from cover_engine.runtime.scoring import Scorer, make_backend, make_scorer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cover_engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
