"""manifest.json: schema, file checks, graph/manifest agreement, and the ONNX Runtime backend.

The engine folders here are tiny hand-made ONNX graphs with COVER's graph signatures (no torch,
no export; ``helpers/toy_engines.py``), so every failure mode is quick to provoke;
``tests/export/test_onnx_export.py`` does the same checks on a real export of the
reference-vector model.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from helpers.toy_engines import C, HW, INPUTS, T, make_engine_folder, toy_graph, toy_maps, toy_views

from cover_engine.runtime.constants import ViewSpec, views_for_inputs
from cover_engine.runtime.engines.cache import engine_cache_name
from cover_engine.runtime.engines.identity import METADATA_BRANCH
from cover_engine.runtime.engines.manifest import (MANIFEST_FILE, MANIFEST_SCHEMA, SCHEMA_VERSION,
                                                  FileRef, GraphEntry, TensorRTInfo, check_io,
                                                  check_tensorrt, load_manifest,
                                                  validate_manifest)
from cover_engine.runtime.engines.ort_runner import OrtBackend, select_providers
from cover_engine.runtime.errors import EngineError, InputError


@pytest.fixture()
def folder(tmp_path) -> Path:
    make_engine_folder(tmp_path / "eng")
    return tmp_path / "eng"


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- schema

def test_written_manifest_matches_schema_and_round_trips(folder):
    data = json.loads((folder / MANIFEST_FILE).read_text())
    jsonschema.Draft202012Validator.check_schema(MANIFEST_SCHEMA)
    jsonschema.validate(data, MANIFEST_SCHEMA)
    assert validate_manifest(data) == []
    manifest = load_manifest(folder)
    assert manifest.to_dict() == data
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["scores"]["overall"] == "semantic + technical + aesthetic"
    assert data["normalisation"]["semantic"]["mean"] == list(manifest.views["semantic"].mean)
    assert manifest.specs["technical"] == views_for_inputs(INPUTS)["technical"]
    assert isinstance(manifest.specs["aesthetic"], ViewSpec)
    assert manifest.engines == () and manifest.modes == ("video", "image")


MUTATIONS = {
    "missing key": lambda d: d.pop("tools"),
    "extra key": lambda d: d.update(extra=1),
    "bad dtype": lambda d: d["graphs"][0]["inputs"][0].update(dtype="int8"),
    "bad sha256": lambda d: d["graphs"][1]["file"].update(sha256="xyz"),
    "bad precision": lambda d: d.update(precision="int8"),
    "negative size": lambda d: d["graphs"][2]["file"].update(bytes=-1),
    "bad shape entry": lambda d: d["graphs"][0]["outputs"][0].update(shape=[1.5]),
    "too few graphs": lambda d: d.update(graphs=d["graphs"][:2]),
    "bad tensorrt": lambda d: d.update(tensorrt={"version": "10"}),
    "bad capability": lambda d: d.update(tensorrt={"version": "10", "gpu": "x",
                                                   "compute_capability": "sm90",
                                                   "timing_cache": None}),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_validator_agrees_with_jsonschema(folder, mutation):
    data = json.loads((folder / MANIFEST_FILE).read_text())
    MUTATIONS[mutation](data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, MANIFEST_SCHEMA)
    assert validate_manifest(data), mutation
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(EngineError, match="invalid manifest"):
        load_manifest(folder)


# ----------------------------------------------------------------------------- bad folders

def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        load_manifest(tmp_path / "nothing")
    with pytest.raises(EngineError, match="manifest.json: missing"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"schema": "something-else", "schema_version": 1}', "not a cover-engine manifest"),
    ("[1, 2]", "not a cover-engine manifest"),
])
def test_unreadable_or_foreign_manifest(folder, text, match):
    (folder / MANIFEST_FILE).write_text(text)
    with pytest.raises(EngineError, match=match):
        load_manifest(folder)


@pytest.mark.parametrize("version", [0, 1, SCHEMA_VERSION + 1, str(SCHEMA_VERSION), None])
def test_other_schema_version_is_refused(folder, version):
    _edit_manifest(folder, lambda d: d.update(schema_version=version))
    with pytest.raises(EngineError,
                       match=rf"schema version .* reads version {SCHEMA_VERSION}; re-export"):
        load_manifest(folder)
    with pytest.raises(EngineError, match="schema version"):
        OrtBackend(folder)


def test_missing_graph_file(folder):
    (folder / "technical.onnx").unlink()
    with pytest.raises(EngineError, match=r"technical\.onnx: missing .*video/technical"):
        load_manifest(folder)


def test_truncated_graph_file(folder):
    path = folder / "aesthetic-image.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(EngineError, match=r"aesthetic-image\.onnx: truncated: \d+ bytes"):
        OrtBackend(folder)


def test_tampered_graph_file_same_size(folder):
    path = folder / "semantic.onnx"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"semantic\.onnx: sha256 .* altered or replaced"):
        OrtBackend(folder)


def test_file_outside_folder_is_refused(folder, tmp_path):
    shutil.copy(folder / "semantic.onnx", tmp_path / "outside.onnx")
    _edit_manifest(folder, lambda d: d["graphs"][0]["file"].update(path="../outside.onnx"))
    with pytest.raises(EngineError, match="outside the engine folder"):
        load_manifest(folder)


def test_incomplete_graph_set(folder):
    def drop_image_aesthetic(d):
        d["graphs"] = [g for g in d["graphs"] if (g["mode"], g["branch"]) != ("image", "aesthetic")]
    _edit_manifest(folder, drop_image_aesthetic)
    with pytest.raises(EngineError, match="image graphs are .* need one per branch"):
        load_manifest(folder)


def test_unknown_input_source(folder):
    _edit_manifest(folder, lambda d: d["graphs"][1]["inputs"][1].update(source="semantic:feats"))
    with pytest.raises(EngineError, match="reads 'semantic:feats', which no graph produces"):
        load_manifest(folder)


def test_graph_that_does_not_match_manifest(folder):
    """A real, intact graph file whose inputs are not the ones the manifest lists."""
    model, _ = toy_graph("technical", T, "float32")
    model.graph.input[1].name = "features"
    for n in model.graph.node:
        n.input[:] = ["features" if i == "sem_feats" else i for i in n.input]
    onnx.save_model(model, str(folder / "technical.onnx"))
    ref = FileRef.of(folder, folder / "technical.onnx")
    _edit_manifest(folder, lambda d: next(g for g in d["graphs"] if g["mode"] == "video"
                                          and g["branch"] == "technical")["file"]
                   .update(ref.to_dict()))
    load_manifest(folder)  # checksums fine: the mismatch is in the graph itself
    with pytest.raises(EngineError, match=r"technical\.onnx: inputs \['view', 'features'\] do "
                                          r"not match manifest\.json"):
        OrtBackend(folder)


def _entry(data: dict, mode: str, branch: str) -> dict:
    return next(g for g in data["graphs"] if (g["mode"], g["branch"]) == (mode, branch))


def test_swapped_branch_entries_are_refused(folder):
    """The technical and aesthetic entries trade places: every file still matches its checksum and
    its inputs (the toy graphs are identical), so only the graphs' own metadata can tell."""
    def swap(d):
        tech, aes = _entry(d, "video", "technical"), _entry(d, "video", "aesthetic")
        tech["branch"], aes["branch"] = "aesthetic", "technical"
    _edit_manifest(folder, swap)
    load_manifest(folder)  # a valid manifest, every file intact
    with pytest.raises(EngineError) as err:
        OrtBackend(folder)
    assert str(err.value) == (
        f"{folder / 'aesthetic.onnx'}: this graph is the video/aesthetic graph, but manifest.json "
        "lists it as the video/technical graph (entries swapped or edited); re-export the engines "
        "with `cover-export`")


def test_swapped_graph_files_with_fixed_checksums_are_refused(folder):
    """The two files trade contents on disk and the manifest's sizes and sha256 are fixed to match."""
    tech, aes = folder / "technical-image.onnx", folder / "aesthetic-image.onnx"
    a, b = tech.read_bytes(), aes.read_bytes()
    tech.write_bytes(b)
    aes.write_bytes(a)

    def fix(d):
        _entry(d, "image", "technical")["file"] = FileRef.of(folder, tech).to_dict()
        _entry(d, "image", "aesthetic")["file"] = FileRef.of(folder, aes).to_dict()
    _edit_manifest(folder, fix)
    backend = OrtBackend(folder)  # the video graphs are fine; image graphs load on first use
    with pytest.raises(EngineError, match=r"technical-image\.onnx: this graph is the "
                                          r"image/aesthetic graph, but manifest\.json lists it "
                                          r"as the image/technical graph"):
        backend.run(toy_views(1))


def test_graph_without_identity_metadata_is_refused(folder):
    path = folder / "semantic.onnx"
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save_model(model, str(path))
    _edit_manifest(folder, lambda d: _entry(d, "video", "semantic").update(
        file=FileRef.of(folder, path).to_dict()))
    with pytest.raises(EngineError, match=rf"semantic\.onnx: the graph does not say which branch "
                                          rf"it is \(no '{METADATA_BRANCH}' metadata"):
        OrtBackend(folder)


def test_check_io_shapes_and_dtypes():
    _, entry = toy_graph("semantic", T, "float32")
    ok_inputs = [("view", ["batch", 3, T, HW, HW], "float32")]
    outputs = [("score_map", [None, 1, T, HW, HW], "float32"), ("sem_feats", [-1, C, T], "float32")]
    check_io(entry, ok_inputs, outputs, "x.onnx")
    with pytest.raises(EngineError, match=r"x\.onnx: view is float16"):
        check_io(entry, [("view", ["batch", 3, T, HW, HW], "float16")], outputs, "x.onnx")
    with pytest.raises(EngineError, match=r"view is float32 \['batch', 3, 5, 32, 32\]"):
        check_io(entry, [("view", ["batch", 3, 5, HW, HW], "float32")], outputs, "x.onnx")
    with pytest.raises(EngineError, match="view is float32 \\[2, 3"):  # batch fixed at 2
        check_io(entry, [("view", [2, 3, T, HW, HW], "float32")], outputs, "x.onnx")


# ----------------------------------------------------------------------------- backend

@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ort_backend_runs_both_modes(tmp_path, precision):
    make_engine_folder(tmp_path / "eng", precision)
    backend = OrtBackend(tmp_path / "eng")
    assert backend.name == ("onnxruntime" if precision == "fp32" else "onnxruntime-fp16")
    assert backend.specs["semantic"].clip_len == T
    tol = 1e-6 if precision == "fp32" else 2e-3  # fp16 inputs: the backend casts them
    for frames in (T, 1):
        views = toy_views(frames, batch=3)
        maps = backend.run(views)
        assert backend.mode_for(views) == ("video" if frames == T else "image")
        for b, want in toy_maps(views).items():
            assert maps[b].dtype == np.float32 and maps[b].shape == want.shape
            np.testing.assert_allclose(maps[b], want, atol=tol)


def test_ort_backend_rejects_views_of_other_shapes(folder, tmp_path):
    backend = OrtBackend(folder)
    views = toy_views(T)
    views["technical"] = views["technical"][:, :, :, :5]
    with pytest.raises(InputError, match="match none of the engine's inputs"):
        backend.run(views)
    with pytest.raises(InputError, match="views missing .*aesthetic"):
        backend.run({k: v for k, v in toy_views(T).items() if k != "aesthetic"})
    make_engine_folder(tmp_path / "video-only", modes=("video",))
    with pytest.raises(InputError, match="no image graphs"):
        OrtBackend(tmp_path / "video-only").run(toy_views(1))


def test_provider_selection():
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(EngineError, match="CUDAExecutionProvider is not available.*onnxruntime-gpu"):
        select_providers("cuda", available=["CPUExecutionProvider"])
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = select_providers("cuda:1", "tensorrt", available=gpu, cache_dir=Path("/c"))
    assert [p[0] if isinstance(p, tuple) else p for p in chosen] == gpu
    assert chosen[0][1]["device_id"] == 1 and chosen[0][1]["trt_engine_cache_path"] == "/c"
    assert select_providers("cuda", available=gpu)[0] == ("CUDAExecutionProvider", {"device_id": 0})
    with pytest.raises(EngineError, match="unknown ONNX Runtime provider"):
        select_providers("cpu", "vulkan")


# ----------------------------------------------------------------------------- TensorRT, cache

def test_check_tensorrt_refuses_other_builds(folder):
    manifest = load_manifest(folder)
    with pytest.raises(EngineError, match="no TensorRT engines.*cover-export --precision fp32"):
        check_tensorrt(manifest, version="10.3.0", gpu="NVIDIA H100", compute_capability="9.0",
                       folder=folder)
    built = replace(manifest, tensorrt=TensorRTInfo("10.3.0", "NVIDIA H100", "9.0"),
                    graphs=tuple(replace(g, engine=_fake_engine_ref(g)) for g in manifest.graphs))
    check_tensorrt(built, version="10.3.0", gpu="NVIDIA H100", compute_capability="9.0")
    with pytest.raises(EngineError, match=r"TensorRT 10\.3\.0, this is TensorRT 10\.8\.0; "
                                          r"rebuild them here with `cover-export"):
        check_tensorrt(built, version="10.8.0", gpu="NVIDIA H100", compute_capability="9.0")
    with pytest.raises(EngineError, match=r"built for NVIDIA H100 \(compute capability 9\.0\), "
                                          r"this GPU is NVIDIA A100 \(8\.0\); rebuild"):
        check_tensorrt(built, version="10.3.0", gpu="NVIDIA A100", compute_capability="8.0")


def _fake_engine_ref(graph: GraphEntry):
    from cover_engine.runtime.engines.manifest import EngineRef

    return EngineRef(file=graph.file, profiles={t.name: {"min": t.with_batch(1),
                                                         "opt": t.with_batch(1),
                                                         "max": t.with_batch(4)}
                                                for t in graph.inputs})


def test_engine_cache_name(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"head_hidden": 16}))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"1")
    base = engine_cache_name()
    assert base == engine_cache_name() and base.startswith("official-fp32-")
    names = {base, engine_cache_name(config=cfg), engine_cache_name(precision="fp16"),
             engine_cache_name(random_weights=True), engine_cache_name(weights=weights)}
    assert len(names) == 5
    before = engine_cache_name(weights=weights)
    weights.write_bytes(b"22")  # replaced weights give a new cache entry
    assert engine_cache_name(weights=weights) != before
