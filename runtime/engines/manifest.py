"""``manifest.json``: everything a host needs to run an exported COVER engine folder.

``cover-export`` writes one folder per export: three ONNX graphs per mode (optionally TensorRT
engines built from them) and this manifest. A host with no torch -- ``cover-run``, or a C++
program -- reads only the manifest to learn which file to run, with which inputs, how views are
sampled and normalised, and how the score maps become scores. The manifest is checked before any
scoring: schema and version, every listed file's size and sha256, and (by each backend) that the
graphs' real inputs and outputs are the ones listed here.

Layout (schema version 1; :data:`MANIFEST_SCHEMA` is the formal description)::

    schema, schema_version    "cover-engine-manifest", 1
    name, created, precision  export name, UTC time, "fp32" | "fp16"
    opset, batch              ONNX opset; {"min", "opt", "max"} batch sizes engines are built for
    model                     the architecture (ModelConfig.to_dict())
    views                     per branch: sample settings (ViewSpec.to_dict()), video mode
    normalisation             per branch: mean/std on 0..255 RGB, applied as (x - mean) / std
    scores                    branch = mean of its score map; overall = sum of the branches
    weights                   per weight file: name and sha256 (or {"random_seed": n})
    tools                     versions of the exporting software (null where absent)
    graphs                    list, one per (mode, branch):
        mode, branch          "video" | "image"; "semantic" | "technical" | "aesthetic"
        file                  {path, bytes, sha256} of the .onnx file
        external_data         same for its weights file, or null (used above 2 GB)
        inputs, outputs       [{name, shape, dtype, source?}]; shape uses "batch" for the
                              dynamic batch axis; source of an input is "view" (this branch's
                              normalised view) or "semantic:sem_feats" (that graph's output)
        engine                TensorRT engine built from this graph or null:
                              {file: {...}, profiles: {input: {min, opt, max}}}
    tensorrt                  null, or {version, gpu, compute_capability, timing_cache}

Running a mode: the semantic graph first (view -> score_map, sem_feats), then technical and
aesthetic (view, sem_feats -> score_map). Video mode takes sampled clips; image mode takes one
frame (T=1) per branch, the graphs repeat it where the backbone needs two frames.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from cover_engine.runtime.constants import BRANCHES, ViewSpec
from cover_engine.runtime.errors import EngineError

MANIFEST_FILE = "manifest.json"
SCHEMA_ID = "cover-engine-manifest"
SCHEMA_VERSION = 1
MODES: tuple[str, ...] = ("video", "image")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
#: Name of the dynamic batch axis in graph shapes.
BATCH = "batch"
#: How the scores are formed from the graphs' score maps (the same words go into every manifest).
SCORE_RULES: dict[str, Any] = {
    "order": list(BRANCHES),
    "branch": "mean over every element of the branch's score_map (per batch item)",
    "overall": "semantic + technical + aesthetic",
}

#: How views are made from decoded frames: what a host without this package must implement to
#: reproduce ``cover-run`` (the CPU path in ``runtime/`` and the CUDA kernels implement exactly
#: this; the kernel source travels in the folder, see ``kernels``).
PREPROCESSING: dict[str, str] = {
    "decode": "each needed frame decoded once, in presentation order; frame count n = the "
              "stream's frame count, or counted by demuxing when the container has none",
    "colour": "YUV -> RGB with the stream's signalled matrix (BT.601/709/2020) and range, BT.601 "
              "limited when unsignalled; chroma nearest-neighbour; rounded to uint8; rotation "
              "metadata ignored (as upstream's decord)",
    "temporal": "per view, fsize_t = clip_len // t_frag, tlen = n // t_frag, high = tlen - "
                "fsize_t * frame_interval; segment i (0 <= i < t_frag) takes frames i * tlen + r "
                "+ k * frame_interval (0 <= k < fsize_t), modulo n, with r = high // 2 if high > 0 "
                "else 0",
    "image": "a still image is one frame, T = 1, for every view; run the 'image' graphs",
    "resize": "bilinear, align_corners=False, no antialiasing, aspect ratio not kept: per axis "
              "scale = float32(in) / float32(out), src = max(scale * (o + 0.5) - 0.5, 0), i0 = "
              "floor(src), i1 = min(i0 + 1, in - 1), w = src - i0 (float32); width pass then "
              "height pass, each value fma(a, 1 - w, b * w); round half to even to uint8",
    "fragments": "grid of fragments_h x fragments_w cells: cell start min(H // fragments_h * i, "
                 "H - fsize_h), crop fsize_h x fsize_w at start + offset, offset = (H // "
                 "fragments_h - fsize_h) // 2 when positive else 0 (same for width); one set of "
                 "offsets for every `aligned` frames",
    "upsample": "frames with min(H / (fragments_h * fsize_h), W / (fragments_w * fsize_w)) < 1 "
                "are first upsampled for the fragment view by s = 1 / ratio: out = int(n * s), "
                "the resize rule with scale = float32(1 / s) on x / 255, then * 255 truncated to "
                "uint8; the grid is still computed from the original size (upstream's quirk)",
    "normalise": "float32 (x - mean) / std per RGB channel, layout (B, 3, T, H, W)",
}

_DTYPES = ("float32", "float16")
_SHA256 = "^[0-9a-f]{64}$"
_FILE_REF = {
    "type": "object",
    "required": ["path", "bytes", "sha256"],
    "properties": {"path": {"type": "string", "minLength": 1},
                   "bytes": {"type": "integer", "minimum": 0},
                   "sha256": {"type": "string", "pattern": _SHA256}},
    "additionalProperties": False,
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "dtype"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": {"type": "array", "items": {"type": ["integer", "string"]}},
        "dtype": {"enum": list(_DTYPES)},
        "source": {"type": "string"},
    },
    "additionalProperties": False,
}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 1}}
_NUMBERS3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}

#: JSON Schema (draft 2020-12) of ``manifest.json``. The runtime checks manifests with the small
#: validator below (jsonschema is not a runtime dependency); the tests also use jsonschema.
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cover-engine manifest",
    "type": "object",
    "required": ["schema", "schema_version", "name", "created", "precision", "opset", "batch",
                 "model", "views", "normalisation", "preprocessing", "scores", "weights", "tools",
                 "graphs", "tensorrt"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "minLength": 1},
        "created": {"type": "string"},
        "precision": {"enum": list(PRECISIONS)},
        "opset": {"type": "integer", "minimum": 17},
        "batch": {
            "type": "object", "required": ["min", "opt", "max"],
            "properties": {k: {"type": "integer", "minimum": 1} for k in ("min", "opt", "max")},
            "additionalProperties": False,
        },
        "model": {"type": "object"},
        "views": {
            "type": "object", "required": list(BRANCHES),
            "additionalProperties": {
                "type": "object",
                "required": ["name", "kind", "clip_len", "t_frag", "frame_interval", "mean", "std"],
                "properties": {"kind": {"enum": ["resize", "fragments"]},
                               "mean": _NUMBERS3, "std": _NUMBERS3},
            },
        },
        "normalisation": {
            "type": "object", "required": list(BRANCHES),
            "additionalProperties": {
                "type": "object", "required": ["mean", "std", "input"],
                "properties": {"mean": _NUMBERS3, "std": _NUMBERS3, "input": {"type": "string"}},
            },
        },
        "preprocessing": {
            "type": "object", "required": sorted(PREPROCESSING) + ["kernels"],
            "properties": {"kernels": {"oneOf": [{"type": "null"}, _FILE_REF]}},
            "additionalProperties": {"type": "string"},
        },
        "scores": {
            "type": "object", "required": ["order", "branch", "overall"],
            "properties": {"order": {"type": "array", "items": {"enum": list(BRANCHES)}},
                           "branch": {"type": "string"}, "overall": {"type": "string"}},
        },
        "weights": {"type": "object"},
        "tools": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
        "graphs": {
            "type": "array", "minItems": 3,
            "items": {
                "type": "object",
                "required": ["mode", "branch", "file", "external_data", "inputs", "outputs",
                             "engine"],
                "properties": {
                    "mode": {"enum": list(MODES)},
                    "branch": {"enum": list(BRANCHES)},
                    "file": _FILE_REF,
                    "external_data": {"oneOf": [{"type": "null"}, _FILE_REF]},
                    "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                    "outputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                    "engine": {"oneOf": [{"type": "null"}, {
                        "type": "object", "required": ["file", "profiles"],
                        "properties": {
                            "file": _FILE_REF,
                            "profiles": {"type": "object", "additionalProperties": {
                                "type": "object", "required": ["min", "opt", "max"],
                                "properties": {"min": _SHAPE, "opt": _SHAPE, "max": _SHAPE},
                                "additionalProperties": False}},
                        },
                        "additionalProperties": False,
                    }]},
                },
                "additionalProperties": False,
            },
        },
        "tensorrt": {"oneOf": [{"type": "null"}, {
            "type": "object",
            "required": ["version", "gpu", "compute_capability", "timing_cache"],
            "properties": {"version": {"type": "string"}, "gpu": {"type": "string"},
                           "compute_capability": {"type": "string", "pattern": r"^\d+\.\d+$"},
                           "timing_cache": {"type": ["string", "null"]}},
            "additionalProperties": False,
        }]},
    },
    "additionalProperties": False,
}

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
            "tools": self.tools,
            "graphs": [g.to_dict() for g in self.graphs],
            "tensorrt": self.tensorrt.to_dict() if self.tensorrt else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Manifest":
        views = {b: ViewSpec(**{**v, "mean": tuple(v["mean"]), "std": tuple(v["std"])})
                 for b, v in d["views"].items()}
        return cls(name=d["name"], created=d["created"], precision=d["precision"],
                   opset=d["opset"], batch=dict(d["batch"]), model=d["model"], views=views,
                   weights=d["weights"], tools=d["tools"], scores=d["scores"],
                   graphs=tuple(GraphEntry.from_dict(g) for g in d["graphs"]),
                   kernels=(FileRef(**d["preprocessing"]["kernels"])
                            if d["preprocessing"].get("kernels") else None),
                   tensorrt=TensorRTInfo(**d["tensorrt"]) if d["tensorrt"] else None)


def write_manifest(folder: Union[str, Path], manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` (checked against the schema first)."""
    data = manifest.to_dict()
    problems = validate(data)
    if problems:
        raise EngineError(f"refusing to write an invalid manifest: {problems[0]}")
    path = Path(folder) / MANIFEST_FILE
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load_manifest(folder: Union[str, Path], *, verify_files: bool = True) -> Manifest:
    """Read and check ``folder/manifest.json``; with ``verify_files``, every file it lists too.

    Raises EngineError naming the file and the cause: no manifest, unreadable JSON, another
    schema or schema version, a structure the schema rejects, a missing, truncated or altered
    graph or engine file, or graph sets that do not cover the three branches.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise EngineError(f"{folder}: engine folder does not exist "
                          "(run `cover-export` to make one)")
    if not path.is_file():
        raise EngineError(f"{path}: missing; {folder} is not an engine folder written by "
                          "`cover-export`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EngineError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        raise EngineError(f"{path}: not a cover-engine manifest (no \"schema\": \"{SCHEMA_ID}\")")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EngineError(f"{path}: manifest schema version {version!r}, but this cover-engine "
                          f"reads version {SCHEMA_VERSION}; re-export the engines with this "
                          "version's `cover-export`")
    problems = validate(data)
    if problems:
        raise EngineError(f"{path}: invalid manifest: {problems[0]}")
    try:
        manifest = Manifest.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise EngineError(f"{path}: invalid manifest: {exc}") from None
    _check_graph_sets(manifest, path)
    if verify_files:
        verify_manifest_files(folder, manifest)
    return manifest


def verify_manifest_files(folder: Union[str, Path], manifest: Manifest) -> None:
    """Every listed file exists inside ``folder`` with the recorded size and sha256."""
    folder = Path(folder).resolve()
    listed = [(graph.key + " graph", ref) for graph in manifest.graphs for ref in graph.files()]
    if manifest.kernels is not None:
        listed.append(("preprocessing kernels", manifest.kernels))
    for owner, ref in listed:
        path = (folder / ref.path).resolve()
        if folder not in path.parents:
            raise EngineError(f"{folder / MANIFEST_FILE}: {ref.path!r} points outside the "
                              "engine folder")
        if not path.is_file():
            raise EngineError(f"{path}: missing (listed in {MANIFEST_FILE} for the "
                              f"{owner})")
        size = path.stat().st_size
        if size != ref.bytes:
            what = "truncated" if size < ref.bytes else "larger than recorded"
            raise EngineError(f"{path}: {what}: {size} bytes, {MANIFEST_FILE} says "
                              f"{ref.bytes}; re-export the engines")
        digest = sha256_file(path)
        if digest != ref.sha256:
            raise EngineError(f"{path}: sha256 {digest[:16]}... does not match "
                              f"{MANIFEST_FILE} ({ref.sha256[:16]}...): the file was "
                              "altered or replaced; re-export the engines")


def check_io(graph: GraphEntry, inputs: Iterable[tuple[str, Sequence, str]],
             outputs: Iterable[tuple[str, Sequence, str]], where: str) -> None:
    """The graph's real ``(name, shape, dtype)`` inputs and outputs are the manifest's.

    Dynamic axes may be reported as a name, None or -1; they match the manifest's ``"batch"``.
    """
    for kind, expected, actual in (("inputs", graph.inputs, list(inputs)),
                                   ("outputs", graph.outputs, list(outputs))):
        want = [(t.name, tuple(t.shape), t.dtype) for t in expected]
        got = [(n, tuple(_dim(d) for d in s), dt) for n, s, dt in actual]
        if [w[0] for w in want] != [g[0] for g in got]:
            raise EngineError(f"{where}: {kind} {[g[0] for g in got]} do not match "
                              f"{MANIFEST_FILE} ({[w[0] for w in want]}) for the {graph.key} "
                              "graph")
        for (name, shape, dtype), (_, gshape, gdtype) in zip(want, got):
            if dtype != gdtype or len(shape) != len(gshape) or any(
                    (d == BATCH) != (g == BATCH) or (d != BATCH and d != g)
                    for d, g in zip(shape, gshape)):
                raise EngineError(f"{where}: {name} is {gdtype} {list(gshape)}, {MANIFEST_FILE} "
                                  f"says {dtype} {list(shape)} ({graph.key} graph)")


def check_tensorrt(manifest: Manifest, *, version: str, gpu: str, compute_capability: str,
                   folder: Union[str, Path] = ".") -> None:
    """Refuse engines built for another TensorRT version or GPU, saying how to rebuild them."""
    info = manifest.tensorrt
    rebuild = (f"rebuild them here with `cover-export --precision {manifest.precision} "
               f"--out {folder}` (or use --backend onnxruntime)")
    if info is None or not manifest.engines:
        raise EngineError(f"{folder}: holds no TensorRT engines; {rebuild}")
    if info.version != version:
        raise EngineError(f"{folder}: engines were built with TensorRT {info.version}, this is "
                          f"TensorRT {version}; {rebuild}")
    if info.compute_capability != compute_capability or info.gpu != gpu:
        raise EngineError(f"{folder}: engines were built for {info.gpu} (compute capability "
                          f"{info.compute_capability}), this GPU is {gpu} ({compute_capability}); "
                          f"{rebuild}")


def engine_cache_name(*, weights=None, clip_weights=None, config=None,
                      random_weights: bool = False, precision: str = "fp32") -> str:
    """A folder name for the cached export of these settings (cheap: no weight hashing).

    Explicit weight paths enter by absolute path, size and modification time, so replacing a file
    gives a new name; the default (verified) weights enter by their official checksums.
    """
    from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_WEIGHTS

    def weight_id(path, official) -> Any:
        if random_weights:
            return "random"
        if path is None:
            return official.sha256
        p = Path(path).expanduser().resolve()
        st = p.stat() if p.exists() else None
        return [str(p), st.st_size if st else None, st.st_mtime_ns if st else None]

    if config is None:
        cfg: Any = "official"
    elif isinstance(config, Mapping):
        cfg = dict(config)
    elif hasattr(config, "to_dict"):
        cfg = config.to_dict()
    else:
        try:
            cfg = json.loads(Path(config).read_text())
        except (OSError, ValueError):
            cfg = str(Path(config).resolve())
    key = json.dumps({"schema": SCHEMA_VERSION, "config": cfg, "precision": precision,
                      "cover": weight_id(weights, COVER_WEIGHTS),
                      "clip": weight_id(clip_weights, CLIP_WEIGHTS)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    base = "official" if config is None else "custom"
    return f"{'random' if random_weights else base}-{precision}-{digest}"


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate(instance: Any, schema: Mapping = MANIFEST_SCHEMA, where: str = "") -> list[str]:
    """Problems of ``instance`` under the JSON Schema subset :data:`MANIFEST_SCHEMA` uses.

    Covers type, const, enum, required, properties, additionalProperties, items, min/maxItems,
    minimum, minLength, pattern and oneOf -- enough for one clear message, without jsonschema.
    """
    import re

    at = where or "manifest"
    if "oneOf" in schema:
        if sum(not validate(instance, s, where) for s in schema["oneOf"]) != 1:
            return [f"{at}: does not match exactly one allowed form"]
        return []
    if "const" in schema and instance != schema["const"]:
        return [f"{at}: must be {schema['const']!r}, got {instance!r}"]
    if "enum" in schema and instance not in schema["enum"]:
        return [f"{at}: must be one of {schema['enum']}, got {instance!r}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(instance, t) for t in types):
            return [f"{at}: must be {' or '.join(types)}, got {type(instance).__name__}"]
    problems: list[str] = []
    if isinstance(instance, dict):
        for key in schema.get("required", ()):
            if key not in instance:
                problems.append(f"{at}: missing {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            sub = f"{where}.{key}" if where else key
            if key in props:
                problems += validate(value, props[key], sub)
            elif extra is False:
                problems.append(f"{at}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                problems += validate(value, extra, sub)
    elif isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            problems.append(f"{at}: needs at least {schema['minItems']} items")
        if len(instance) > schema.get("maxItems", len(instance)):
            problems.append(f"{at}: takes at most {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                problems += validate(item, schema["items"], f"{where}[{i}]")
    elif isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            problems.append(f"{at}: must not be empty")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            problems.append(f"{at}: {instance!r} does not match {schema['pattern']}")
    elif _is_type(instance, "number") and instance < schema.get("minimum", instance):
        problems.append(f"{at}: must be >= {schema['minimum']}, got {instance}")
    return problems


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str, "boolean": bool,
                              "null": type(None)}[name])


def _check_graph_sets(manifest: Manifest, path: Path) -> None:
    """Each mode present has exactly one graph per branch, wired as the pipeline expects."""
    if "video" not in manifest.modes:
        raise EngineError(f"{path}: lists no video graphs")
    for mode in manifest.modes:
        found = sorted(g.branch for g in manifest.graphs if g.mode == mode)
        if found != sorted(BRANCHES):
            raise EngineError(f"{path}: {mode} graphs are {found}, need one per branch "
                              f"({', '.join(BRANCHES)})")
        produced = {f"{g.branch}:{t.name}" for g in manifest.graphs if g.mode == mode
                    for t in g.outputs}
        for g in manifest.graphs:
            if g.mode == mode:
                for t in g.inputs:
                    if t.source != "view" and t.source not in produced:
                        raise EngineError(f"{path}: {g.key} input {t.name} reads {t.source!r}, "
                                          "which no graph produces")
                if not any(t.name == "score_map" for t in g.outputs):
                    raise EngineError(f"{path}: {g.key} graph has no score_map output")


def _dim(d: Any) -> Dim:
    if d is None or isinstance(d, str) or (isinstance(d, int) and d < 0):
        return BATCH
    return int(d)


def jsonable(value: Any) -> Any:
    """Tuples to lists, recursively (JSON has no tuples; equality after a round trip)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
