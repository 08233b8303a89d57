"""cover-export on the reference-vector model: graphs, fp32/fp16 accuracy, manifest, bad inputs,
and the TensorRT build against a fake ``tensorrt`` module (TensorRT itself is not installable
here).

fp16 bound: on the reference-vector model, ONNX Runtime (CPU) fp16 score maps differ from the
reference by at most 7.3e-4 and branch scores by at most 1.6e-4 (measured); the tests allow 2e-3
and 5e-4.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from cover_engine.export import graphs, onnx_export, onnx_passes, trt_build
from cover_engine.export.backend_torch import TorchBackend
from cover_engine.runtime.cli.export import main as export_main
from cover_engine.export.config import ModelConfig
from cover_engine.export.weights import load_model
from cover_engine.runtime.engines.identity import METADATA_BRANCH, METADATA_MODE
from cover_engine.runtime.engines.ort_runner import OrtBackend
from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.errors import EngineError
from cover_engine.runtime.engines.manifest import (MANIFEST_FILE, MANIFEST_SCHEMA, FileRef,
                                                  load_manifest, write_manifest)
from cover_engine.runtime.hashing import sha256_file
from cover_engine.runtime.results import branch_scores

pytestmark = pytest.mark.vectors

FP32_TOL = 1e-4
FP16_MAP_TOL = 2e-3
FP16_SCORE_TOL = 5e-4
CASES = ("video", "image")


@pytest.fixture(scope="module")
def ref(vectors_dir):
    model_dir = vectors_dir / "model"
    io = np.load(model_dir / "io.npz")
    return SimpleNamespace(
        dir=model_dir, config=model_dir / "config.json",
        views={c: {b: io[f"{c}/input/{b}"] for b in BRANCHES} for c in CASES},
        maps={c: {b: io[f"{c}/score_map/{b}"] for b in BRANCHES} for c in CASES},
        scores={c: {k: float(io[f"{c}/score/{k}"]) for k in BRANCHES + ("overall",)}
                for c in CASES})


@pytest.fixture(scope="module")
def model(ref):
    torch.set_num_threads(1)
    cfg = ModelConfig.from_json(ref.config)
    return load_model(cfg, ref.dir / "cover.pth", ref.dir / "clip.pt")


@pytest.fixture(scope="module", autouse=True)
def trace_once():
    """Trace each graph once per module: the fp16 and external-data exports reuse the fp32
    traces (same config and weights, so the same graphs) instead of re-running torch.export."""
    traced: dict = {}
    trace = graphs.trace_graph

    def cached(model, plan, opset=graphs.DEFAULT_OPSET, head_chunk=None):
        key = plan, opset, head_chunk
        if key not in traced:
            traced[key] = trace(model, plan, opset, head_chunk)
        copy = onnx.ModelProto()
        copy.CopyFrom(traced[key])
        return copy

    mp = pytest.MonkeyPatch()
    mp.setattr(onnx_export, "trace_graph", cached)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def fp32_dir(ref, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "fp32"
    lines: list[str] = []
    onnx_export.export_all(out, config=ref.config, weights=ref.dir / "cover.pth",
                           clip_weights=ref.dir / "clip.pt", model=model, check=True,
                           log=lines.append)
    assert any("video/technical" in line and "max |diff|" in line for line in lines)
    return out


@pytest.fixture(scope="module")
def fp16_run(ref, tmp_path_factory):
    """The CLI, fp16, video graphs only, on a host without tensorrt; --out relative."""
    out = tmp_path_factory.mktemp("export") / "fp16"
    mp = pytest.MonkeyPatch()
    mp.setattr(trt_build, "import_tensorrt", lambda required=True: None)
    mp.chdir(out.parent)
    try:
        result = CliRunner().invoke(export_main, [
            "--precision", "fp16", "--no-images", "--out", out.name, "--config", str(ref.config),
            "--weights", str(ref.dir / "cover.pth"), "--clip-weights", str(ref.dir / "clip.pt")])
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    return out, result.output


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("case", CASES)
def test_fp32_graphs_reproduce_reference_maps(fp32_dir, ref, case):
    maps = OrtBackend(fp32_dir).run(ref.views[case])
    scores = branch_scores(maps)
    for b in BRANCHES:
        assert maps[b].shape == ref.maps[case][b].shape
        np.testing.assert_allclose(maps[b], ref.maps[case][b], rtol=0, atol=FP32_TOL)
    for k in BRANCHES + ("overall",):
        assert scores[k][0] == pytest.approx(ref.scores[case][k], abs=FP32_TOL)


def test_ort_and_torch_backends_agree_on_a_batch(fp32_dir, model, ref):
    rng = np.random.default_rng(5)
    views = {b: np.concatenate([ref.views["video"][b],
                                rng.standard_normal(ref.views["video"][b].shape).astype(np.float32),
                                ref.views["video"][b][:, :, ::-1].copy()])
             for b in BRANCHES}
    ort_maps = OrtBackend(fp32_dir).run(views)
    torch_maps = TorchBackend(config=ref.config, model=model).run(views)
    ort_scores, torch_scores = branch_scores(ort_maps), branch_scores(torch_maps)
    for k in BRANCHES + ("overall",):
        np.testing.assert_allclose(ort_scores[k], torch_scores[k], rtol=0, atol=FP32_TOL)
    for b in BRANCHES:  # batch items are independent: item 0 is the reference clip
        np.testing.assert_allclose(ort_maps[b][:1], ref.maps["video"][b], rtol=0, atol=FP32_TOL)


def test_fp16_graphs_within_documented_bound(fp16_run, ref):
    out, _ = fp16_run
    backend = OrtBackend(out)
    manifest = load_manifest(out)
    assert manifest.precision == "fp16" and manifest.modes == ("video",)
    view = manifest.graph("video", "technical").inputs[0]
    assert view.dtype == "float16" and manifest.graph("video", "semantic").outputs[0].dtype == "float32"
    maps = backend.run(ref.views["video"])
    errors = {b: float(np.abs(maps[b] - ref.maps["video"][b]).max()) for b in BRANCHES}
    assert max(errors.values()) <= FP16_MAP_TOL, errors
    assert max(errors.values()) > 1e-6, "fp16 graphs should not be bit-exact fp32 graphs"
    scores = branch_scores(maps)
    for k in BRANCHES + ("overall",):
        assert scores[k][0] == pytest.approx(ref.scores["video"][k], abs=FP16_SCORE_TOL)


def test_fp16_keeps_normalisations_and_softmax_in_fp32(fp16_run):
    out, _ = fp16_run
    for branch in BRANCHES:
        graph = onnx.load(str(out / f"{branch}.onnx"))
        producers = {o: n for n in graph.graph.node for o in n.output}
        inits = {t.name: t for t in graph.graph.initializer}
        kept = [n for n in graph.graph.node if n.op_type in onnx_passes.KEEP_FP32_OPS]
        assert any(n.op_type == "LayerNormalization" for n in kept)
        for node in kept:
            x = node.input[0]
            assert producers[x].op_type == "Cast" and producers[x].attribute[0].i == onnx.TensorProto.FLOAT
            for name in node.input[1:]:
                if name in inits and inits[name].data_type in (1, 10):
                    assert inits[name].data_type == onnx.TensorProto.FLOAT, (node.name, name)
        if branch == "aesthetic":  # ConvNeXt's channels-first norms became LayerNormalization
            assert "ReduceMean" not in onnx_passes.op_types(graph)
        big = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
               and np.prod(t.dims) > 4096]
        assert not big, [t.name for t in big]  # weights are fp16


def test_cli_reports_each_step_and_missing_tensorrt(fp16_run):
    _, output = fp16_run
    for step in ("[1/5] model", "[2/5] video/semantic", "[3/5] video/technical",
                 "[4/5] video/aesthetic", "[5/5] TensorRT: the tensorrt package is not installed"):
        assert step in output, output
    assert "wrote " in output and "manifest.json" in output


def test_cli_engine_without_tensorrt_fails_before_exporting(tmp_path, monkeypatch):
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda required=True: None)
    result = CliRunner().invoke(export_main, ["--engine", "--random-weights", "--out",
                                              str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "tensorrt package is not installed" in result.output
    assert not (tmp_path / "x").exists()


def test_custom_config_needs_named_weights(tmp_path, ref, monkeypatch):
    monkeypatch.delenv("COVER_WEIGHTS", raising=False)
    monkeypatch.delenv("COVER_CLIP_WEIGHTS", raising=False)
    result = CliRunner().invoke(export_main, ["--config", str(ref.config), "--out",
                                              str(tmp_path / "x")])
    assert result.exit_code == 1 and "needs its weights named" in result.output


# ----------------------------------------------------------------------------- graphs

def test_graphs_are_clean_standard_onnx(fp32_dir):
    manifest = load_manifest(fp32_dir)
    assert len(manifest.graphs) == 6
    for entry in manifest.graphs:
        path = fp32_dir / entry.file.path
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path))
        opset = {o.domain: o.version for o in graph.opset_import}
        assert opset.get("", 0) >= 17 and set(opset) <= {"", "ai.onnx"}
        assert onnx_passes.trt_parser_problems(graph) == []
        assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
        ops = onnx_passes.op_types(graph)
        # bias tables gathered by a constant index were folded; nothing random remains
        assert "GatherND" not in ops and not any(op.startswith("Random") for op in ops)
        for v in list(graph.graph.input) + list(graph.graph.output):
            dims = v.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch" and all(d.dim_value > 0 for d in dims[1:])
        assert [v.name for v in graph.graph.input] == [t.name for t in entry.inputs]


def test_manifest_describes_the_export(fp32_dir, ref):
    data = json.loads((fp32_dir / MANIFEST_FILE).read_text())
    jsonschema.validate(data, MANIFEST_SCHEMA)
    assert data["precision"] == "fp32" and data["tensorrt"] is None
    assert data["model"] == ModelConfig.from_json(ref.config).to_dict()
    assert data["weights"]["cover"]["sha256"] == sha256_file(ref.dir / "cover.pth")
    assert data["weights"]["clip"]["sha256"] == sha256_file(ref.dir / "clip.pt")
    assert data["tools"]["torch"] == torch.__version__ and data["tools"]["onnx"] == onnx.__version__
    views = data["views"]
    inputs = ModelConfig.from_json(ref.config).inputs
    assert views["technical"]["kind"] == "fragments" and views["technical"]["clip_len"] == inputs["technical"][2]
    assert views["semantic"]["size_h"] == inputs["semantic"][3]
    semantic = next(g for g in data["graphs"] if g["mode"] == "video" and g["branch"] == "semantic")
    assert [o["name"] for o in semantic["outputs"]] == ["score_map", "sem_feats"]
    technical = next(g for g in data["graphs"] if g["mode"] == "image" and g["branch"] == "technical")
    assert technical["inputs"][0]["shape"] == ["batch", 3, 1, 224, 224]
    assert technical["inputs"][1]["source"] == "semantic:sem_feats"


def test_manifest_carries_preprocessing_and_kernel_source(fp32_dir, tmp_path):
    """A host with only the folder has the sampling rules in words and the view kernels."""
    data = json.loads((fp32_dir / MANIFEST_FILE).read_text())
    pre = data["preprocessing"]
    assert {"decode", "colour", "colour_exact", "colour_default", "temporal", "resize",
            "fragments", "upsample", "normalise"} <= set(pre)
    assert pre["colour_default"] == "decord" and pre["colour"].startswith("decord:")
    kernel = fp32_dir / pre["kernels"]["path"]
    assert "cover_fragments_view" in kernel.read_text()
    assert sha256_file(kernel) == pre["kernels"]["sha256"]
    folder = _copy(fp32_dir, tmp_path)
    (folder / pre["kernels"]["path"]).write_text("// edited\n")
    with pytest.raises(EngineError, match=r"views\.cu: .*preprocessing kernels|views\.cu: (truncated|larger)"):
        OrtBackend(folder)


def test_external_data_graph(model, ref, tmp_path):
    plan = next(p for p in graphs.graph_plans(model.config, ("video",))
                if p.branch == "aesthetic")
    entry = onnx_export.export_graph(model, plan, tmp_path, external_threshold=0)
    assert entry.external_data is not None
    data = tmp_path / entry.external_data.path
    assert data.stat().st_size > (tmp_path / entry.file.path).stat().st_size
    assert onnx_export.check_graph(model, plan, entry, tmp_path) <= FP32_TOL


# ----------------------------------------------------------------------------- bad inputs

def test_truncated_graph_is_refused_before_scoring(fp32_dir, tmp_path):
    folder = _copy(fp32_dir, tmp_path)
    path = folder / "technical.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EngineError, match=r"technical\.onnx: truncated"):
        OrtBackend(folder)


def test_tampered_and_missing_graphs_are_refused(fp32_dir, tmp_path):
    folder = _copy(fp32_dir, tmp_path)
    path = folder / "semantic-image.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"semantic-image\.onnx: sha256 .* altered"):
        OrtBackend(folder)
    (folder / "aesthetic.onnx").unlink()
    with pytest.raises(EngineError, match=r"aesthetic\.onnx: missing"):
        OrtBackend(folder)


def test_manifest_of_other_schema_version_is_refused(fp32_dir, tmp_path):
    folder = _copy(fp32_dir, tmp_path)
    data = json.loads((folder / MANIFEST_FILE).read_text())
    data["schema_version"] = 1
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(EngineError, match="schema version 1"):
        OrtBackend(folder)


def test_swapped_graph_does_not_match_manifest(fp32_dir, tmp_path):
    """technical.onnx replaced by the (valid) semantic graph, checksums updated to match."""
    folder = _copy(fp32_dir, tmp_path)
    shutil.copy(folder / "semantic.onnx", folder / "technical.onnx")
    data = json.loads((folder / MANIFEST_FILE).read_text())
    for g in data["graphs"]:
        if g["file"]["path"] == "technical.onnx":
            g["file"] = FileRef.of(folder, folder / "technical.onnx").to_dict()
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(EngineError, match=r"technical\.onnx: this graph is the video/semantic "
                                          r"graph, but manifest\.json lists it as the "
                                          r"video/technical graph"):
        OrtBackend(folder)


def test_exported_graphs_carry_their_mode_and_branch(fp32_dir):
    manifest = load_manifest(fp32_dir)
    assert len(manifest.graphs) == 6
    for g in manifest.graphs:
        props = {p.key: p.value for p in
                 onnx.load(str(fp32_dir / g.file.path), load_external_data=False).metadata_props}
        assert props[METADATA_MODE] == g.mode and props[METADATA_BRANCH] == g.branch


def test_swapped_technical_and_aesthetic_entries_are_refused(fp32_dir, tmp_path):
    """The manifest's technical and aesthetic entries trade branch names: every checksum still
    holds; the graphs' metadata says which is which."""
    folder = _copy(fp32_dir, tmp_path)
    data = json.loads((folder / MANIFEST_FILE).read_text())
    for g in data["graphs"]:
        if g["branch"] in ("technical", "aesthetic"):
            g["branch"] = "aesthetic" if g["branch"] == "technical" else "technical"
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    load_manifest(folder)
    with pytest.raises(EngineError, match=r"aesthetic\.onnx: this graph is the video/aesthetic "
                                          r"graph, but manifest\.json lists it as the "
                                          r"video/technical graph"):
        OrtBackend(folder)


# ----------------------------------------------------------------------------- TensorRT (fake)

class FakeTensorRT:
    """Just enough of TensorRT 10's Python API to drive trt_build, recording what it is told."""

    __version__ = "10.99.1"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 0

    class BuilderFlag:
        TF32 = 7

    class MemoryPoolType:
        WORKSPACE = 0

    def __init__(self, parse_ok: bool = True):
        self.log: list = []
        self.parse_ok = parse_ok
        trt = self

        class Network:
            def __init__(self, flags):
                trt.log.append(("create_network", flags))
                self.inputs: list[str] = []
                self.name = "parsed"

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return SimpleNamespace(name=self.inputs[i])

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                trt.log.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

        class Cache:
            def __init__(self, blob):
                self.blob = bytes(blob)

            def serialize(self):
                return self.blob + b"+timings"

        class Config:
            def clear_flag(self, flag):
                trt.log.append(("clear_flag", flag))

            def set_memory_pool_limit(self, pool, size):
                trt.log.append(("workspace", size))

            def add_optimization_profile(self, profile):
                trt.log.append(("add_profile",))
                return 0

            def create_timing_cache(self, blob):
                trt.log.append(("timing_cache_in", bytes(blob)))
                return Cache(blob)

            def set_timing_cache(self, cache, ignore_mismatch):
                return True

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                trt.log.append(("build", network.name))
                return b"PLAN:" + ",".join(network.inputs).encode()

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                trt.log.append(("parse", Path(path).name))
                graph = onnx.load(path, load_external_data=False)
                self.network.inputs = [v.name for v in graph.graph.input]
                return trt.parse_ok

            def get_error(self, i):
                return "In node 3 (Foo): UNSUPPORTED_NODE"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_trt_build_profiles_cache_and_manifest(fp32_dir, tmp_path, monkeypatch):
    folder = _copy(fp32_dir, tmp_path)
    manifest = load_manifest(folder)
    monkeypatch.setattr(trt_build, "device_info", lambda device=0: ("NVIDIA H100 80GB HBM3", "9.0"))
    fake = FakeTensorRT()
    cache = folder / "timing.cache"
    cache.write_bytes(b"old")
    batch = {"min": 1, "opt": 2, "max": 6}
    entries, info = trt_build.build_engines(fake, folder, manifest.graphs, batch,
                                            precision="fp16", timing_cache=cache, log=lambda m: None)
    strongly_typed = 1 << FakeTensorRT.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert fake.log.count(("create_network", strongly_typed)) == len(manifest.graphs)
    assert ("clear_flag", FakeTensorRT.BuilderFlag.TF32) not in fake.log  # fp16 build
    shapes = [e for e in fake.log if e[0] == "set_shape"]
    image_tech = manifest.graph("image", "technical")
    feats = image_tech.inputs[1]
    assert ("set_shape", "sem_feats", feats.with_batch(1), feats.with_batch(2),
            feats.with_batch(6)) in shapes
    assert ("set_shape", "view", (1, 3, 1, 224, 224), (2, 3, 1, 224, 224),
            (6, 3, 1, 224, 224)) in shapes
    assert len(shapes) == sum(len(g.inputs) for g in manifest.graphs)  # one per input per graph
    # the timing cache grows across the builds and is kept on disk
    seen = [e[1] for e in fake.log if e[0] == "timing_cache_in"]
    assert seen[0] == b"old" and seen[1] == b"old+timings" and cache.read_bytes().startswith(b"old+")
    for entry in entries:
        plan = folder / entry.engine.file.path
        assert plan.suffix == ".plan" and plan.read_bytes().startswith(b"PLAN:view")
        assert entry.engine.profiles["view"]["max"][0] == 6
    # each engine is named for its graph's mode and branch (the runtime checks that name)
    assert [e[1] for e in fake.log if e[0] == "build"] == [
        f"cover-engine:{g.mode}/{g.branch}" for g in manifest.graphs]
    assert info.version == "10.99.1" and info.compute_capability == "9.0"
    assert info.timing_cache == "timing.cache"
    built = replace(manifest, graphs=tuple(entries), tensorrt=info, batch=batch)
    write_manifest(folder, built)
    jsonschema.validate(json.loads((folder / MANIFEST_FILE).read_text()), MANIFEST_SCHEMA)
    reloaded = load_manifest(folder)
    assert len(reloaded.engines) == 6 and reloaded.tensorrt.gpu == "NVIDIA H100 80GB HBM3"
    (folder / "semantic.plan").write_bytes(b"PLAN:other")  # engines are checksummed too
    with pytest.raises(EngineError, match=r"semantic\.plan: .*(truncated|larger|sha256)"):
        load_manifest(folder)


def test_trt_build_fp32_and_parser_errors(fp32_dir, tmp_path):
    manifest = load_manifest(fp32_dir)
    entry = manifest.graph("video", "aesthetic")
    fake = FakeTensorRT()
    profiles = trt_build.profile_shapes(entry.inputs, {"min": 1, "opt": 1, "max": 2})
    trt_build.build_engine(fake, fp32_dir / entry.file.path, tmp_path / "a.plan", profiles,
                           precision="fp32", workspace=1 << 30)
    assert ("clear_flag", FakeTensorRT.BuilderFlag.TF32) in fake.log
    assert ("workspace", 1 << 30) in fake.log and (tmp_path / "a.plan").is_file()
    with pytest.raises(EngineError, match="network inputs .* do not match"):
        trt_build.build_engine(fake, fp32_dir / entry.file.path, tmp_path / "b.plan",
                               {"view": profiles["view"]}, precision="fp16")
    with pytest.raises(EngineError, match="ONNX parser rejects it: In node 3"):
        trt_build.build_engine(FakeTensorRT(parse_ok=False), fp32_dir / entry.file.path,
                               tmp_path / "c.plan", profiles, precision="fp16")
    with pytest.raises(EngineError, match="bad batch range"):
        trt_build.profile_shapes(entry.inputs, {"min": 2, "opt": 1, "max": 4})
