"""The parsed manifest: frozen dataclasses, each with ``to_dict`` / ``from_dict``.

They describe; they do not check. :func:`~.io.load_manifest` validates a document against the
schema before building them, and :func:`~.io.write_manifest` validates what they produce.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from cover_engine.runtime.constants import ViewSpec
from cover_engine.runtime.engines.manifest.schema import (BATCH, MANIFEST_FILE, MODES,
                                                          PREPROCESSING, SCHEMA_ID,
                                                          SCHEMA_VERSION, SCORE_RULES)
from cover_engine.runtime.errors import EngineError
from cover_engine.runtime.hashing import sha256_file

__all__ = ["Dim", "FileRef", "TensorSpec", "EngineRef", "GraphEntry", "TensorRTInfo", "Manifest",
           "jsonable"]

Dim = Union[int, str]


@dataclass(frozen=True)
class FileRef:
    """A file of the engine folder, by path relative to the folder, size and sha256."""

    path: str
    bytes: int
    sha256: str

    @classmethod
    def of(cls, folder: Union[str, Path], path: Union[str, Path]) -> "FileRef":
        """Describe a file of ``folder``: ``path`` is absolute or relative to the folder."""
        full = Path(folder) / path  # an absolute path replaces the folder
        return cls(path=full.resolve().relative_to(Path(folder).resolve()).as_posix(),
                   bytes=full.stat().st_size, sha256=sha256_file(full))

    def to_dict(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` holds :data:`BATCH` on the dynamic batch axis."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    source: Optional[str] = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.source is not None:
            d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"],
                   source=d.get("source"))

    def with_batch(self, batch: int) -> tuple[int, ...]:
        """The concrete shape for a batch size."""
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


@dataclass(frozen=True)
class EngineRef:
    """A TensorRT engine built from one graph, with its optimisation profile per input."""

    file: FileRef
    profiles: dict[str, dict[str, tuple[int, ...]]]

    def to_dict(self) -> dict:
        return {"file": self.file.to_dict(),
                "profiles": {name: {k: list(v) for k, v in p.items()}
                             for name, p in self.profiles.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "EngineRef":
        return cls(file=FileRef(**d["file"]),
                   profiles={name: {k: tuple(v) for k, v in p.items()}
                             for name, p in d["profiles"].items()})


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: which branch and mode it serves, its files and its signature."""

    mode: str
    branch: str
    file: FileRef
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: Optional[FileRef] = None
    engine: Optional[EngineRef] = None

    @property
    def key(self) -> str:
        return f"{self.mode}/{self.branch}"

    def files(self) -> list[FileRef]:
        return [f for f in (self.file, self.external_data,
                            self.engine.file if self.engine else None) if f is not None]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "branch": self.branch, "file": self.file.to_dict(),
                "external_data": self.external_data.to_dict() if self.external_data else None,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "engine": self.engine.to_dict() if self.engine else None}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GraphEntry":
        return cls(mode=d["mode"], branch=d["branch"], file=FileRef(**d["file"]),
                   external_data=FileRef(**d["external_data"]) if d["external_data"] else None,
                   inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                   engine=EngineRef.from_dict(d["engine"]) if d["engine"] else None)


@dataclass(frozen=True)
class TensorRTInfo:
    """Where the engines were built: TensorRT refuses to run them on another GPU or version."""

    version: str
    gpu: str
    compute_capability: str
    timing_cache: Optional[str] = None

    def to_dict(self) -> dict:
        return {"version": self.version, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "timing_cache": self.timing_cache}


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` (see the module docstring for the meaning of each field)."""

    name: str
    precision: str
    opset: int
    batch: dict[str, int]
    model: dict
    views: dict[str, ViewSpec]
    weights: dict
    tools: dict[str, Optional[str]]
    graphs: tuple[GraphEntry, ...]
    created: str = ""
    tensorrt: Optional[TensorRTInfo] = None
    scores: dict = field(default_factory=lambda: dict(SCORE_RULES))
    #: The CUDA view kernels' source, shipped in the folder for a C++ host (None: not shipped).
    kernels: Optional[FileRef] = None
    #: A calibration to MOS (the content of a ``cover-eval --fit-calibration`` file), or None.
    calibration: Optional[dict] = None
    #: The ``cover-train`` head file baked into the graphs (None: the base weights' own heads):
    #: ``{file, sha256, trained, labels_sha256, validation}``.
    head: Optional[dict] = None

    @property
    def specs(self) -> dict[str, ViewSpec]:
        """View settings by branch (the backend protocol's ``specs``)."""
        return dict(self.views)

    @property
    def engines(self) -> tuple[EngineRef, ...]:
        """The TensorRT engines in this folder (empty for an ONNX-only export)."""
        return tuple(g.engine for g in self.graphs if g.engine is not None)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in MODES if any(g.mode == m for g in self.graphs))

    def graph(self, mode: str, branch: str) -> GraphEntry:
        for g in self.graphs:
            if g.mode == mode and g.branch == branch:
                return g
        raise EngineError(f"{MANIFEST_FILE}: no {mode} graph for the {branch} branch")

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "created": self.created,
            "precision": self.precision,
            "opset": self.opset,
            "batch": dict(self.batch),
            "model": self.model,
            "views": {b: jsonable(v.to_dict()) for b, v in self.views.items()},
            "normalisation": {b: {"mean": list(v.mean), "std": list(v.std),
                                  "input": "RGB 0..255 per channel; view = (x - mean) / std"}
                              for b, v in self.views.items()},
            "preprocessing": {**PREPROCESSING,
                              "kernels": self.kernels.to_dict() if self.kernels else None},
            "scores": self.scores,
            "weights": self.weights,
            "head": self.head,
            "tools": self.tools,
            "graphs": [g.to_dict() for g in self.graphs],
            "tensorrt": self.tensorrt.to_dict() if self.tensorrt else None,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Manifest":
        views = {b: ViewSpec(**{**v, "mean": tuple(v["mean"]), "std": tuple(v["std"])})
                 for b, v in d["views"].items()}
        return cls(name=d["name"], created=d["created"], precision=d["precision"],
                   opset=d["opset"], batch=dict(d["batch"]), model=d["model"], views=views,
                   weights=d["weights"], head=d["head"], tools=d["tools"], scores=d["scores"],
                   graphs=tuple(GraphEntry.from_dict(g) for g in d["graphs"]),
                   kernels=(FileRef(**d["preprocessing"]["kernels"])
                            if d["preprocessing"].get("kernels") else None),
                   tensorrt=TensorRTInfo(**d["tensorrt"]) if d["tensorrt"] else None,
                   calibration=d.get("calibration"))


def jsonable(value: Any) -> Any:
    """Tuples to lists, recursively (JSON has no tuples; equality after a round trip)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
