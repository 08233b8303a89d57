"""The TensorRT backend and the GPU fast path.

Without a GPU: the backend's logic against a fake ``tensorrt`` module (engines read and checked
against the manifest, tensors bound by name, refusal of engines built elsewhere) and the NVDEC
path's decisions. On a GPU (``gpu`` marker): cuda-python memory, TensorRT against ONNX Runtime,
and the whole NVDEC + kernels + TensorRT pipeline against the CPU scorer.
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.gpu_fakes import (CAPABILITY, GPU_NAME, TRT_VERSION, EmulatedKernels,
                               FakeCudaRuntime, fake_pynvvideocodec, fake_tensorrt,
                               install_fake_gpu)
from helpers.media import pattern, write_video

from cover_engine.runtime.engines import trt_runner as bt
from cover_engine.runtime.engines.identity import engine_name
from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.constants import views_for_inputs
from cover_engine.runtime.errors import EngineError, InputError
from cover_engine.runtime.engines.manifest import (BATCH, EngineRef, FileRef, GraphEntry, Manifest,
                                           TensorRTInfo, TensorSpec, load_manifest,
                                           write_manifest)

@pytest.fixture
def fake_gpu(monkeypatch):
    """TensorRT and CUDA replaced by the fakes of gpu_fakes, so the backend's orchestration
    runs here."""
    runtime = install_fake_gpu(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    yield runtime
    FakeCudaRuntime.current = None


# ------------------------------------------------------------------------------ an engine folder

VIEW_SHAPES = {"semantic": (3, 4, 32, 32), "technical": (3, 8, 64, 64), "aesthetic": (3, 8, 32, 32)}
MAP_SHAPES = {"semantic": (1, 4, 1, 1), "technical": (1, 4, 2, 2), "aesthetic": (1, 4, 1, 1)}
FEATS = (16, 4)


def _graph_io(branch):
    inputs = [TensorSpec("view", (BATCH,) + VIEW_SHAPES[branch], "float32", "view")]
    outputs = [TensorSpec("score_map", (BATCH,) + MAP_SHAPES[branch], "float32")]
    if branch == "semantic":
        outputs.append(TensorSpec("sem_feats", (BATCH,) + FEATS, "float32"))
    else:
        inputs.append(TensorSpec("sem_feats", (BATCH,) + FEATS, "float32", "semantic:sem_feats"))
    return inputs, outputs


def _engine_json(inputs, outputs, *, reverse=False, change=None, name=None) -> str:
    """A fake engine file: its tensors (and its network name, as TensorRT keeps it)."""
    tensors = [{"name": t.name, "mode": mode, "dtype": "FLOAT",
                "shape": [-1 if d == BATCH else d for d in t.shape]}
               for mode, group in (("INPUT", inputs), ("OUTPUT", outputs)) for t in group]
    if change:
        for t in tensors:
            t.update(change.get(t["name"], {}))
    tensors = tensors[::-1] if reverse else tensors
    return json.dumps(tensors if name is None else {"name": name, "tensors": tensors})


def make_folder(folder: Path, *, engine_files=None, trt_info=True) -> Path:
    """A manifest with three video graphs and their (fake) engines; ``engine_files`` overrides
    the text of an engine file by branch."""
    folder.mkdir(parents=True, exist_ok=True)
    graphs = []
    for branch in ("semantic", "technical", "aesthetic"):
        inputs, outputs = _graph_io(branch)
        (folder / f"{branch}.onnx").write_bytes(b"onnx " + branch.encode())
        text = (engine_files or {}).get(branch) or _engine_json(
            inputs, outputs, reverse=True, name=engine_name("video", branch))
        (folder / f"{branch}.plan").write_text(text)
        profiles = {t.name: {"min": t.with_batch(1), "opt": t.with_batch(1), "max": t.with_batch(4)}
                    for t in inputs}
        graphs.append(GraphEntry(
            mode="video", branch=branch, file=FileRef.of(folder, Path(f"{branch}.onnx")),
            inputs=tuple(inputs), outputs=tuple(outputs),
            engine=EngineRef(FileRef.of(folder, Path(f"{branch}.plan")), profiles)))
    views = views_for_inputs({b: (1,) + shape for b, shape in VIEW_SHAPES.items()})
    manifest = Manifest(name="fake", precision="fp16", opset=18,
                        batch={"min": 1, "opt": 1, "max": 4}, model={}, views=views,
                        weights={"random_seed": 0}, tools={"tensorrt": TRT_VERSION},
                        graphs=tuple(graphs),
                        tensorrt=TensorRTInfo(TRT_VERSION, GPU_NAME, CAPABILITY)
                        if trt_info else None)
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "engines")


# ------------------------------------------------------------------------------ without a GPU


def test_gpu_modules_import_nothing_heavy_until_used():
    """TensorRT, cuda-python, PyNvVideoCodec (and torch, never) load only when a GPU object is
    made, so these modules import on any host."""
    code = ("import sys\n"
            "import cover_engine.runtime.engines.trt_runner, cover_engine.runtime.gpu.pipeline, "
            "cover_engine.runtime.gpu.nvdec, cover_engine.runtime.gpu.cuda\n"
            "print(sorted(m for m in ('tensorrt', 'cuda', 'cuda.bindings', 'PyNvVideoCodec', "
            "'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_tensorrt_is_one_clear_error(monkeypatch, folder):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match=r"TensorRT is not installed.*onnxruntime"):
        bt.TrtBackend(folder)


def test_engines_are_checked_against_the_manifest_by_name(folder):
    trt = fake_tensorrt()
    manifest = bt.open_folder(folder, trt, gpu_name=GPU_NAME, compute_capability=CAPABILITY)
    engines = bt.load_engines(trt, trt.Runtime(trt.Logger()), folder, manifest, "video")
    assert sorted(engines) == ["aesthetic", "semantic", "technical"]
    # the fake engines list their tensors in reverse order: binding by name does not care
    tensors = bt.engine_tensors(trt, engines["technical"])
    assert [t.name for t in tensors] == ["score_map", "sem_feats", "view"]
    assert [t.is_input for t in tensors] == [False, True, True]
    assert tensors[2].shape == (-1,) + VIEW_SHAPES["technical"] and tensors[2].dtype == "float32"


@pytest.mark.parametrize("version,gpu_name,capability,message", [
    ("10.8.0.43", GPU_NAME, CAPABILITY,
     r"built with TensorRT 10\.9\.0\.34, this is TensorRT 10\.8"),
    (TRT_VERSION, "NVIDIA H100 80GB HBM3", "9.0",
     r"built for NVIDIA A100.*this GPU is NVIDIA H100"),
])
def test_engines_built_elsewhere_are_refused_with_a_rebuild_hint(folder, version, gpu_name,
                                                                 capability, message):
    with pytest.raises(EngineError, match=message) as err:
        bt.open_folder(folder, fake_tensorrt(version), gpu_name=gpu_name,
                       compute_capability=capability)
    assert "rebuild" in str(err.value) and "cover-export" in str(err.value)


def test_a_folder_without_engines_is_refused(tmp_path):
    folder = make_folder(tmp_path / "onnx-only", trt_info=False)
    with pytest.raises(EngineError, match="no TensorRT engines"):
        bt.open_folder(folder, fake_tensorrt(), gpu_name=GPU_NAME, compute_capability=CAPABILITY)


def test_an_unreadable_engine_names_its_file(tmp_path):
    folder = make_folder(tmp_path / "bad", engine_files={"aesthetic": "not an engine"})
    trt = fake_tensorrt()
    manifest = load_manifest(folder)
    with pytest.raises(EngineError,
                       match=r"aesthetic\.plan: TensorRT 10\.9\.0\.34 cannot deserialize"):
        bt.load_engines(trt, trt.Runtime(trt.Logger()), folder, manifest, "video")


@pytest.mark.parametrize("change,message", [
    ({"view": {"shape": [-1, 3, 4, 32, 33]}}, r"view is float32 \[.*33\].*says float32"),
    ({"view": {"dtype": "HALF"}}, r"view is float16"),
    ({"score_map": {"name": "scores"}}, r"outputs \[.*'scores'\] do not match"),
])
def test_engine_tensors_that_differ_from_the_manifest_are_refused(tmp_path, change, message):
    inputs, outputs = _graph_io("semantic")
    folder = make_folder(tmp_path / "odd",
                         engine_files={"semantic": _engine_json(
                             inputs, outputs, change=change, name=engine_name("video", "semantic"))})
    trt = fake_tensorrt()
    with pytest.raises(EngineError, match=message):
        bt.load_engines(trt, trt.Runtime(trt.Logger()), folder, load_manifest(folder), "video")


@pytest.mark.parametrize("name,message", [
    ("cover-engine:video/aesthetic", r"technical\.plan: this engine is the video/aesthetic graph, "
                                     r"but manifest\.json lists it as the video/technical graph"),
    ("", r"technical\.plan: the engine does not say which branch it is"),
    (None, r"technical\.plan: the engine does not say which branch it is"),
])
def test_an_engine_built_for_another_branch_is_refused(tmp_path, name, message):
    """The engine's tensors fit its entry, so only the name it was built under can catch this."""
    inputs, outputs = _graph_io("technical")
    folder = make_folder(tmp_path / "swapped",
                         engine_files={"technical": _engine_json(inputs, outputs, name=name)})
    trt = fake_tensorrt()
    with pytest.raises(EngineError, match=message) as err:
        bt.load_engines(trt, trt.Runtime(trt.Logger()), folder, load_manifest(folder), "video")
    assert "re-export" in str(err.value) and "\n" not in str(err.value)


def test_buffers_and_bindings_follow_the_manifest_sources(folder):
    trt = fake_tensorrt()
    manifest = load_manifest(folder)
    graphs = {b: manifest.graph("video", b) for b in ("semantic", "technical", "aesthetic")}
    layout = bt.buffer_layout(graphs, batch=3)
    assert layout["view:technical"] == ((3,) + VIEW_SHAPES["technical"], "float32")
    assert layout["semantic:sem_feats"] == ((3,) + FEATS, "float32")
    assert sorted(layout) == ["aesthetic:score_map", "semantic:score_map", "semantic:sem_feats",
                              "technical:score_map", "view:aesthetic", "view:semantic",
                              "view:technical"]
    addresses = {key: 0x1000 * (i + 1) for i, key in enumerate(sorted(layout))}
    engines = bt.load_engines(trt, trt.Runtime(trt.Logger()), folder, manifest, "video")
    context = engines["technical"].create_execution_context()
    bt.bind(context, graphs["technical"], 3, addresses)
    assert context.shapes == {"view": (3,) + VIEW_SHAPES["technical"], "sem_feats": (3,) + FEATS}
    assert context.addresses == {"view": addresses["view:technical"],
                                 "sem_feats": addresses["semantic:sem_feats"],
                                 "score_map": addresses["technical:score_map"]}


def test_binding_outside_the_profile_is_an_engine_error(folder):
    trt = fake_tensorrt()
    manifest = load_manifest(folder)
    graph = manifest.graph("video", "semantic")
    engine = bt.load_engines(trt, trt.Runtime(trt.Logger()), folder, manifest, "video")["semantic"]
    addresses = {k: 1 for k in bt.buffer_layout({b: manifest.graph("video", b) for b in
                                                 ("semantic", "technical", "aesthetic")}, 5)}
    with pytest.raises(EngineError,
                       match=r"video/semantic engine rejects input view of shape \[5,"):
        bt.bind(engine.create_execution_context(), graph, 5, addresses)


def test_an_input_no_engine_produces_is_refused(folder):
    manifest = load_manifest(folder)
    graphs = {b: manifest.graph("video", b) for b in ("semantic", "technical", "aesthetic")}
    odd = GraphEntry(**{**graphs["aesthetic"].__dict__, "inputs": (
        graphs["aesthetic"].inputs[0], TensorSpec("sem_feats", (BATCH,) + FEATS, "float32",
                                                  "technical:sem_feats"))})
    with pytest.raises(EngineError, match="reads 'technical:sem_feats', which no engine produces"):
        bt.buffer_layout({**graphs, "aesthetic": odd}, 1)


def test_frame_buffer_rows_are_aligned():
    from cover_engine.runtime.gpu.nvdec import frame_buffer_layout

    pitch, luma, total = frame_buffer_layout(1080, 1920, 2)
    assert pitch == 3840 and luma == 3840 * 1080 and total == 3840 * (1080 + 540)
    pitch, luma, total = frame_buffer_layout(113, 175, 1)
    assert pitch == 256 and total == 256 * (113 + 57)


def _views(batch, seed):
    rng = np.random.default_rng(seed)
    return {b: rng.random((batch,) + shape, dtype=np.float32) for b, shape in VIEW_SHAPES.items()}


def _expected(views):
    """The fake network's score maps for these views."""
    level = {b: v.reshape(len(v), -1).mean(axis=1, dtype=np.float64) for b, v in views.items()}
    out = {"semantic": level["semantic"]}
    for b in ("technical", "aesthetic"):
        out[b] = level[b] + 2 * level["semantic"]
    return {b: np.broadcast_to(v.reshape((-1,) + (1,) * 4),
                               (len(v),) + MAP_SHAPES[b]) for b, v in out.items()}


def test_backend_runs_binds_and_replays_cuda_graphs(fake_gpu, folder):
    backend = bt.TrtBackend(folder, in_flight=2, log=lambda m: None)
    assert backend.name == "tensorrt-fp16" and backend.max_batch == 4
    for k in range(6):  # new views each time: a replayed graph must recompute everything
        views = _views(2, k)
        maps = backend.run(views)
        for b, want in _expected(views).items():
            assert maps[b].shape == want.shape and maps[b].dtype == np.float32
            np.testing.assert_allclose(maps[b], want, rtol=1e-5, err_msg=f"run {k}, {b}")
    # each slot: first run plain, second run plain and captured, later runs replay the graph
    assert fake_gpu.launches == 2
    other = _views(3, 1)  # another batch size: rebound, buffers grown, graphs dropped
    for b, want in _expected(other).items():
        np.testing.assert_allclose(backend.run(other)[b], want, rtol=1e-5, err_msg=b)


def test_cuda_graphs_are_kept_per_batch_size(fake_gpu, folder):
    """Defect 8: switching batch size used to drop every captured graph. Each (mode, batch)
    now has contexts and a graph of its own: alternating sizes replay, never recapture, and
    every replay computes with its own shapes (the fake contexts read their shapes at run
    time, so a graph replayed on contexts rebound for another size would give wrong maps)."""
    backend = bt.TrtBackend(folder, in_flight=1, log=lambda m: None)
    sizes = [3, 1, 3, 1] + [1, 3] * 4   # the buffers reach their largest size first
    for k, batch in enumerate(sizes):
        views = _views(batch, k)
        maps = backend.run(views)
        for b, want in _expected(views).items():
            np.testing.assert_allclose(maps[b], want, rtol=1e-5, err_msg=f"run {k}, {b}")
    slot = backend._slots[0]
    assert slot.captures == 2 and sorted(slot.units) == [("video", 1), ("video", 3)]
    assert fake_gpu.launches == len(sizes) - 4
    engines = backend._engines_for("video")
    assert all(len(e.contexts) == 2 for e in engines.values())  # one per batch size


def test_bench_per_engine_pass_runs_on_the_bound_contexts(fake_gpu, folder):
    """cover-bench's TensorRT row times each engine on the slot's contexts for the batch size
    just bound (the contexts of that (mode, batch) unit, not another size's)."""
    from cover_engine.bench.probes import TrtProbe
    from cover_engine.bench.stages import Timer

    backend = bt.TrtBackend(folder, in_flight=1, log=lambda m: None)
    probe = TrtProbe(backend, "cuda")
    for batch in (2, 1):
        views = _views(batch, batch)
        backend.run(views)
        timer = Timer(probe.clock)
        probe.extra(views, timer)
        slot = backend._slots[0]
        contexts = slot.contexts_for("video")
        assert contexts is slot.units[("video", batch)].contexts
        assert all(c.shapes["view"][0] == batch for c in contexts.values())
        assert all(c.runs >= 2 for c in contexts.values())  # run, then the timing pass


def test_execution_units_per_slot_are_bounded(fake_gpu, folder):
    backend = bt.TrtBackend(folder, in_flight=1, cuda_graphs=False)
    for batch in (4, 1, 2, 3, 4, 1):
        backend.run(_views(batch, batch))
    assert len(backend._slots[0].units) == bt.MAX_UNITS_PER_SLOT


def test_backend_keeps_several_batches_in_flight(fake_gpu, folder):
    backend = bt.TrtBackend(folder, in_flight=2, cuda_graphs=False)
    batches = [_views(1 + k % 3, k) for k in range(5)]
    pending = [backend.submit(v) for v in batches[:3]]  # the third reuses the first one's slot
    for p, v in zip(pending, batches):
        for b, want in _expected(v).items():
            np.testing.assert_allclose(p.result()[b], want, rtol=1e-5, err_msg=b)
    for maps, v in zip(backend.run_many(batches), batches):
        for b, want in _expected(v).items():
            np.testing.assert_allclose(maps[b], want, rtol=1e-5, err_msg=b)
    assert fake_gpu.launches == 0


def test_backend_rejects_views_it_has_no_engine_for(fake_gpu, folder):
    backend = bt.TrtBackend(folder)
    views = _views(1, 0)
    with pytest.raises(InputError, match="match none of the engine's inputs"):
        backend.run({**views, "technical": views["technical"][:, :, :4]})
    with pytest.raises(InputError, match="views missing for branch"):
        backend.run({"semantic": views["semantic"]})
    with pytest.raises(InputError, match=r"batch of 5 is outside the engines' range 1\.\.4"):
        backend.run(_views(5, 0))


def _encode_h264(path: Path, width=320, height=240, frames=30) -> Path:
    return write_video(path, [pattern(height, width, t) for t in range(frames)], options={})


class HostDecoder:
    """Stands in for NVDEC: PyAV's YUV planes of the wanted frames, as NV12."""

    def __init__(self):
        self.calls = []

    def decode(self, path, indices, info, *, stream, colour="decord"):
        import av

        from cover_engine.runtime.gpu.emulation import HostFrames, semi_planar
        from cover_engine.runtime.media.colour import frame_conversion

        wanted, planes = [int(i) for i in indices], {}
        self.calls.append(wanted)
        with av.open(str(path)) as container:
            for k, frame in enumerate(container.decode(video=0)):
                if k in wanted:
                    planes[k] = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)
                                 [:, :p.width] for p in frame.planes]
        nv12 = [semi_planar(*planes[k]) for k in wanted]
        conv = frame_conversion(colour, info.matrix, info.full_range, info.bit_depth, info.height,
                                info.width, 1, 1)

        class Frames(HostFrames):
            def close(self):  # what the slot calls once the kernels are done
                pass

        return Frames([y for y, _, _ in nv12], [c for _, c, _ in nv12], 0, conv)


def _cpu_scores(backend, video, seed, clips):
    from cover_engine.runtime.results import branch_scores
    from cover_engine.runtime.views.assemble import load_views

    views, _ = load_views(video, backend.specs, seed=seed, clips=clips)
    return {k: float(v.mean()) for k, v in branch_scores(backend.run(views)).items()}


@pytest.fixture
def pipeline_parts(fake_gpu, monkeypatch):
    """The fast path with fake TensorRT and CUDA, the kernels' emulation, and a fake
    PyNvVideoCodec 2.2.4 behind the real NvdecDecoder."""
    from cover_engine.runtime.gpu import nvdec, pipeline as gpu_views

    module = fake_pynvvideocodec()
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
    monkeypatch.setattr(nvdec, "_pynvvideocodec", lambda: (module, ""))
    monkeypatch.setattr(gpu_views, "ViewKernels", EmulatedKernels)
    return gpu_views, module


def test_gpu_pipeline_wiring_gives_the_cpu_scores(pipeline_parts, folder, tmp_path):
    """Plans, frame slots, per-view tables and view buffers of the fast path, with the host
    stand-in for NVDEC: the scores are the CPU path's."""
    gpu_views, _ = pipeline_parts
    video = _encode_h264(tmp_path / "clip.mp4")
    backend = bt.TrtBackend(folder)
    decoder, notices = HostDecoder(), []
    for seed, clips in ((None, 1), (4, 2)):
        pipeline = gpu_views.GpuPipeline(backend, seed=seed, clips=clips, decoder=decoder,
                                         log=notices.append)
        got = pipeline.score(video)
        for field, value in _cpu_scores(backend, video, seed, clips).items():
            assert getattr(got, field) == pytest.approx(value, rel=1e-6), (seed, field)
        assert got.backend == "tensorrt-fp16+nvdec"
    assert notices == [] and len(decoder.calls) == 2
    assert decoder.calls[0] == sorted(set(decoder.calls[0]))  # each needed frame once


def test_nvdec_pipeline_gives_the_cpu_scores(pipeline_parts, folder, tmp_path):
    """The real decoder over the fake PyNvVideoCodec (NV12 and P016, element strides, odd
    sizes), through the pooled frame buffers and the kernels' maths, to the CPU's scores."""
    gpu_views, _ = pipeline_parts
    videos = [_encode_h264(tmp_path / "clip.mp4")]
    from helpers.media import has_encoder, textured
    if has_encoder("libx265"):
        videos.append(write_video(tmp_path / "hevc10.mkv",
                                  [textured(112, 176, t) for t in range(24)], codec="libx265",
                                  pix_fmt="yuv420p10le",
                                  options={"x265-params": "log-level=error"}))
    if has_encoder("libvpx-vp9"):
        videos.append(write_video(tmp_path / "odd.webm",
                                  [textured(117, 175, t) for t in range(24)], codec="libvpx-vp9",
                                  options={"deadline": "realtime", "cpu-used": "8"}))
    backend = bt.TrtBackend(folder)
    notices = []
    pipeline = gpu_views.GpuPipeline(backend, seed=3, clips=2, log=notices.append)
    for video in videos:
        got = pipeline.score(video)
        for field, value in _cpu_scores(backend, video, 3, 2).items():
            assert getattr(got, field) == pytest.approx(value, rel=1e-6), (video.name, field)
        assert got.backend == "tensorrt-fp16+nvdec", video.name
    assert notices == [] and pipeline.nvdec_files == len(videos)


def test_gpu_pipeline_falls_back_to_the_cpu_with_one_notice(pipeline_parts, folder, tmp_path):
    from cover_engine.runtime.gpu import nvdec

    gpu_views, _ = pipeline_parts

    class Refusing:
        def decode(self, path, indices, info, *, stream, colour="decord"):
            raise nvdec.NvdecUnavailable("NVDEC cannot decode h264: no decoder engine")

    video = _encode_h264(tmp_path / "clip.mp4", frames=12)
    notices = []
    pipeline = gpu_views.GpuPipeline(bt.TrtBackend(folder), decoder=Refusing(),
                                     log=notices.append)
    first, second = pipeline.score(video), pipeline.score(video)
    assert first.overall == second.overall and first.backend == "tensorrt-fp16"
    assert notices == ["cover-run: NVDEC not used (NVDEC cannot decode h264: no decoder "
                       "engine); decoding on the CPU"]
    assert pipeline.cpu_files == 2 and pipeline.nvdec_files == 0


def test_a_gpu_failure_is_not_hidden_by_the_cpu_path(pipeline_parts, folder, tmp_path):
    """Defect 6 at the pipeline: out of memory while decoding fails the file; it does not
    quietly run on the CPU."""
    gpu_views, module = pipeline_parts

    class OutOfMemory(module.SimpleDecoder):
        def get_batch_frames_by_index(self, indices):
            raise RuntimeError("cuMemAlloc returned CUDA_ERROR_OUT_OF_MEMORY")

    module.SimpleDecoder = OutOfMemory
    notices = []
    pipeline = gpu_views.GpuPipeline(bt.TrtBackend(folder), log=notices.append)
    with pytest.raises(gpu.GpuError, match="out of GPU memory"):
        pipeline.score(_encode_h264(tmp_path / "clip.mp4", frames=12))
    assert notices == [] and pipeline.cpu_files == 0


def test_score_many_decodes_the_next_file_while_one_is_inferred(pipeline_parts, folder,
                                                                tmp_path):
    """Defect 8: score() waited for each file, so the two slots never overlapped. score_many
    submits file k+1 (decoding it) before collecting file k's result; a bad file in the
    middle is reported in its place and the others are scored."""
    gpu_views, _ = pipeline_parts
    videos = [_encode_h264(tmp_path / f"clip{k}.mp4", frames=12 + 4 * k) for k in range(4)]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    order = []
    backend = bt.TrtBackend(folder, in_flight=2)
    pipeline = gpu_views.GpuPipeline(backend, log=lambda m: None)
    submit, finish = pipeline.submit, pipeline._finish
    pipeline.submit = lambda path, **kw: (order.append(("submit", Path(path).name)),
                                          submit(path, **kw))[1]
    pipeline._finish = lambda path, job: (order.append(("result", Path(path).name)),
                                          finish(path, job))[1]
    paths = videos[:2] + [bad] + videos[2:]
    got = list(pipeline.score_many(paths))
    assert [p for p, _ in got] == paths
    assert isinstance(got[2][1], Exception) and "broken.mp4" in str(got[2][1])
    for (path, score) in got[:2] + got[3:]:
        assert score.overall == pytest.approx(pipeline.score(path).overall, rel=1e-6)
    names = [n for _, n in order[:5]]
    assert order[:3] == [("submit", "clip0.mp4"), ("submit", "clip1.mp4"),
                         ("result", "clip0.mp4")], order
    assert names.index("clip1.mp4") < [o for o in order].index(("result", "clip0.mp4"))


def test_views_and_frames_come_from_the_pool(pipeline_parts, folder, tmp_path, monkeypatch):
    """Defect 8: no cudaMalloc / cudaFree per launch or per file once the pool is warm."""
    gpu_views, _ = pipeline_parts
    from helpers import gpu_fakes

    video = _encode_h264(tmp_path / "clip.mp4", frames=16)
    backend = bt.TrtBackend(folder, in_flight=2)
    pipeline = gpu_views.GpuPipeline(backend, clips=2, log=lambda m: None)
    for _ in range(2):  # warm: both slots, their buffers, the pool's frame buffers
        pipeline.score(video)
    made, freed = gpu_fakes.FakeBuffer.made, gpu_fakes.FakeBuffer.freed
    for _ in range(4):
        list(pipeline.score_many([video, video]))
    assert (gpu_fakes.FakeBuffer.made, gpu_fakes.FakeBuffer.freed) == (made, freed)
    # held by the slots until reused: per file the frames, their address table, 3 view tables
    assert pipeline.decoder.pool.leased <= 5 * len(backend._slots)


# ------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
def test_device_memory_streams_and_events():
    gpu.use_device(0)
    data = np.arange(1 << 16, dtype=np.float32)
    stream = gpu.Stream()
    start, end = gpu.Event(timing=True), gpu.Event(timing=True)
    start.record(stream)
    with gpu.DeviceBuffer(data.nbytes) as buf:
        pinned = gpu.PinnedArray(data.shape, np.float32)
        pinned.array[...] = data
        buf.upload(pinned.array, stream)
        back = gpu.PinnedArray(data.shape, np.float32)
        buf.download(back.array, stream)
        end.record(stream)
        end.synchronize()
        assert end.query()
        np.testing.assert_array_equal(back.array, data)
        assert end.elapsed_ms(start) >= 0
        pinned.close()
        back.close()
    stream.close()
    major, _ = gpu.compute_capability(0)
    assert major >= 5 and gpu.device_name(0)


def _vectors_config(vectors_dir) -> Path:
    return vectors_dir / "model" / "config.json"


@pytest.fixture(scope="module")
def trt_folder(tmp_path_factory, gpu_vectors_dir):
    """Engines of the reference vectors' small model (random weights), built here."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("torch")
    from cover_engine.export.onnx_export import export_all

    out = tmp_path_factory.mktemp("trt")
    export_all(out, config=_vectors_config(gpu_vectors_dir), random_weights=True,
               precision="fp32",
               engines=True, batch_max=2, log=lambda m: None)
    return out


@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime_and_replays_graphs(trt_folder, gpu_vectors_dir):
    from cover_engine.runtime.engines.ort_runner import OrtBackend

    io = np.load(gpu_vectors_dir / "model" / "io.npz")
    views = {b: np.concatenate([io[f"video/input/{b}"]] * 2) for b in ("semantic", "technical",
                                                                      "aesthetic")}
    want = OrtBackend(trt_folder).run(views)
    backend = bt.TrtBackend(trt_folder, in_flight=2)
    runs = [backend.run(views) for _ in range(3)]  # plain, plain + capture, graph replay
    for maps in runs:
        for b, m in want.items():
            np.testing.assert_allclose(maps[b], m, atol=2e-3, rtol=2e-3, err_msg=b)
    for b in want:
        np.testing.assert_array_equal(runs[2][b], runs[1][b])
    many = list(backend.run_many([views] * 5))
    assert len(many) == 5
    for maps in many:
        for b in want:
            np.testing.assert_array_equal(maps[b], runs[1][b])
    with pytest.raises(InputError, match="outside the engines' range"):
        backend.run({b: np.concatenate([v] * 2) for b, v in views.items()})
    backend.close()


@pytest.mark.gpu
def test_nvdec_pipeline_scores_like_the_cpu_path(trt_folder, tmp_path, nvdec_required):
    """The whole fast path on a GPU: NVDEC must decode (no notice, no CPU fallback), and the
    scores are the CPU path's; a folder through score_many gives the same scores."""
    from cover_engine.runtime.engines.ort_runner import OrtBackend
    from cover_engine.runtime.gpu.pipeline import GpuPipeline
    from cover_engine.runtime.scoring import Scorer

    paths = [_encode_h264(tmp_path / f"clip{k}.mp4", frames=40 + 8 * k) for k in range(3)]
    cpu = [Scorer(OrtBackend(trt_folder), clips=2).score(p) for p in paths]
    notices = []
    backend = bt.TrtBackend(trt_folder)
    pipeline = GpuPipeline(backend, clips=2, log=notices.append)
    got = pipeline.score(paths[0])
    many = list(pipeline.score_many(paths))
    assert notices == [], notices
    assert pipeline.nvdec_files == 1 + len(paths) and pipeline.cpu_files == 0
    assert got.backend.endswith("+nvdec")
    for want, (path, score) in zip(cpu, [(paths[0], got)] + many):
        assert not isinstance(score, Exception), score
        for field in ("semantic", "technical", "aesthetic", "overall"):
            assert getattr(score, field) == pytest.approx(getattr(want, field), abs=5e-3), \
                (path, field)
    backend.close()
