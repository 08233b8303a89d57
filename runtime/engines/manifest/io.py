"""Reading, checking and writing ``manifest.json`` in an engine folder.

:func:`load_manifest` is the gate every backend passes before it runs anything: schema and
version, the graph sets, and every listed file's size and sha256. :func:`check_io` and
:func:`check_tensorrt` are the checks a backend makes against what it actually loaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from cover_engine.runtime.constants import BRANCHES, JSON_MAX_BYTES
from cover_engine.runtime.engines.manifest.consistency import consistency_problems
from cover_engine.runtime.engines.manifest.model import Dim, GraphEntry, Manifest
from cover_engine.runtime.engines.manifest.schema import (BATCH, MANIFEST_FILE, MANIFEST_SCHEMA,
                                                          SCHEMA_ID, SCHEMA_VERSION)
from cover_engine.runtime.engines.manifest.validator import validate
from cover_engine.runtime.errors import EngineError
from cover_engine.runtime.hashing import sha256_file
from cover_engine.runtime.safe_json import JSONRefused, loads_strict

__all__ = ["validate_manifest", "write_manifest", "load_manifest", "verify_manifest_files",
           "check_io", "check_tensorrt"]


def validate_manifest(data: Any) -> list[str]:
    """Problems of a ``manifest.json`` document: :data:`~.schema.MANIFEST_SCHEMA` (types and
    ranges), then the rules across fields (:mod:`.consistency`)."""
    return validate(data, MANIFEST_SCHEMA) or consistency_problems(data)


def write_manifest(folder: Union[str, Path], manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` (checked against the schema first)."""
    data = manifest.to_dict()
    problems = validate_manifest(data)
    if problems:
        raise EngineError(f"refusing to write an invalid manifest: {problems[0]}")
    path = Path(folder) / MANIFEST_FILE
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return path


def load_manifest(folder: Union[str, Path], *, verify_files: bool = True) -> Manifest:
    """Read and check ``folder/manifest.json``; with ``verify_files``, every file it lists too.

    Raises EngineError naming the file and the cause: no manifest, unreadable or hostile JSON
    (NaN, overflowing numbers, duplicate keys, deep nesting: :mod:`~cover_engine.runtime.safe_json`),
    another schema or schema version, a value out of range or contradicting another, a missing,
    truncated or altered graph or engine file, or graph sets that do not cover the three branches.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise EngineError(f"{folder}: engine folder does not exist "
                          "(run `cover-export` to make one)")
    if not path.exists():
        raise EngineError(f"{path}: missing; {folder} is not an engine folder written by "
                          "`cover-export`")
    if not path.is_file():
        raise EngineError(f"{path}: not a regular file")
    try:
        if path.stat().st_size > JSON_MAX_BYTES:
            raise JSONRefused(f"{path.stat().st_size} bytes, more than the {JSON_MAX_BYTES} a "
                              "manifest may hold")
        data = loads_strict(path.read_bytes())
    except OSError as exc:
        raise EngineError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except JSONRefused as exc:
        raise EngineError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        raise EngineError(f"{path}: not a cover-engine manifest (no \"schema\": \"{SCHEMA_ID}\")")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EngineError(f"{path}: manifest schema version {version!r}, but this cover-engine "
                          f"reads version {SCHEMA_VERSION}; re-export the engines with this "
                          "version's `cover-export`")
    problems = validate_manifest(data)
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
