"""The CUDA view kernels: they compile (nvcc, NVRTC), their maths is the CPU path's, and on a GPU
they make the CPU views from NVDEC frames.

Without a GPU the kernels' arithmetic is checked through its numpy emulation
(``gpu.emulation.emulate_view``: same tables, same float32 operations, same rounding), which must
equal the CPU views exactly; on a GPU the kernels are held to the CPU views.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace

import av
import numpy as np
import pytest
from helpers.media import has_encoder, pattern, write_video

from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.gpu import kernels as kernel_files
from cover_engine.runtime.media.colour import (frame_conversion, sws_conversion, sws_rgb,
                                               yuv_to_rgb, yuv_to_rgb_coefficients)
from cover_engine.runtime.constants import OFFICIAL_VIEWS, ViewSpec
from cover_engine.runtime.media.decode import probe
from cover_engine.runtime.gpu.emulation import (HostFrames, RgbFrames, emulate_levels,
                                                 emulate_view, semi_planar)
from cover_engine.runtime.gpu.pipeline import _packed_tables
from cover_engine.runtime.gpu.tables import view_tables
from cover_engine.runtime.views.geometry import fragment_grid
from cover_engine.runtime.views.sampling import clip_rng, needed_frames
from cover_engine.runtime.views.assemble import build_views, load_views, plan_views

KERNELS = sorted(kernel_files.KERNEL_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
ENTRY_POINTS = ("cover_resize_view", "cover_fragments_view")


def _nvrtc_usable() -> bool:
    try:
        gpu.nvrtc_version()
        return True
    except Exception:  # no cuda-python, or no libnvrtc beside it
        return False


needs_nvrtc = pytest.mark.skipif(not _nvrtc_usable(), reason="NVRTC (cuda-python) not available")


def _nvcc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NVCC, *args], capture_output=True, text=True, timeout=300)


def _ptx_body(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("//"))


# ------------------------------------------------------------------------------ compilation


def test_kernel_sources_are_found():
    """The compile tests below run over every .cu file: make sure they are not vacuous."""
    assert "views.cu" in [k.name for k in KERNELS]


@needs_nvcc
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_kernels_compile_with_nvcc(source, tmp_path):
    """What a C++ host does with the file as it is: an object file, warnings as errors."""
    done = _nvcc("-c", "-arch=sm_80", "-Werror", "all-warnings", str(source),
                 "-o", str(tmp_path / "views.o"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "views.o").stat().st_size > 0


@needs_nvcc
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_kernel_arithmetic_does_not_depend_on_contraction(source, tmp_path):
    """Every float operation is an explicit rounding intrinsic: the PTX is the same whether or
    not the compiler may fuse multiply-adds (so GPU results cannot drift from the numpy path)."""
    ptx = {}
    for fmad in ("true", "false"):
        out = tmp_path / f"fmad-{fmad}.ptx"
        done = _nvcc("--ptx", "-arch=sm_80", f"--fmad={fmad}", str(source), "-o", str(out))
        assert done.returncode == 0, done.stderr
        ptx[fmad] = _ptx_body(out.read_text())
    assert ptx["true"] == ptx["false"]
    for name in ENTRY_POINTS:  # extern "C": the host finds them by these names
        assert re.search(rf"\.entry {name}\(", ptx["true"]), name


@needs_nvrtc
def test_kernels_compile_with_nvrtc():
    source = kernel_files.kernel_source("views.cu")
    cubin = gpu.nvrtc_compile(source, "views.cu", "sm_80")
    assert cubin[:4] == b"\x7fELF"
    ptx = gpu.nvrtc_compile(source, "views.cu", "compute_75").decode(errors="replace")
    for name in ENTRY_POINTS:
        assert re.search(rf"\.entry {name}\(", ptx), name


@needs_nvrtc
def test_nvrtc_errors_carry_the_compiler_log():
    with pytest.raises(gpu.KernelCompileError, match="undefined_thing"):
        gpu.nvrtc_compile('extern "C" __global__ void k() { undefined_thing(); }', "bad.cu",
                          "sm_80")


def test_gpu_module_imports_and_reports_no_gpu_cleanly():
    if gpu.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(gpu.GpuError, match="GPU|cuda-python"):
        gpu.require_gpu()


# ------------------------------------------------------------------------------ numpy emulation


@pytest.mark.parametrize("matrix,full,bits", [("bt601", False, 8), ("bt709", True, 8),
                                              ("bt2020", False, 10), ("bt601", True, 12)])
@pytest.mark.parametrize("h,w", [(37, 50), (36, 50), (36, 51), (37, 51)])
def test_colour_emulation_is_the_cpu_conversion(matrix, full, bits, h, w):
    """NV12 / P016 planes through the kernel's colour formulas give colour.py's RGB exactly, for
    both conversions; the sizes take every decord path (odd rows/columns: the last chroma
    row/column serves one luma row/column)."""
    rng = np.random.default_rng(bits)
    top = 1 << bits
    y = rng.integers(0, top, (h, w))
    u, v = rng.integers(0, top, (2, (h + 1) // 2, (w + 1) // 2))
    luma, chroma, shift = semi_planar(y, u, v, bits)
    assert luma.dtype == (np.uint8 if bits == 8 else np.uint16)
    y, u, v = (x.astype(luma.dtype) for x in (y, u, v))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    exact = yuv_to_rgb_coefficients(matrix, full, bits)
    decord = sws_conversion(matrix, full, bits, h, w, 1, 1)
    paths = {(8, 36, 50): "mmx", (8, 36, 51): "mmx"}
    assert decord.path == paths.get((bits, h, w), "full" if w % 2 else "table")
    for conv, want in ((exact, yuv_to_rgb(y, u, v, exact)), (decord, sws_rgb(y, u, v, decord))):
        frames = HostFrames([luma], [chroma], shift, conv)
        np.testing.assert_array_equal(frames.rgb(0, rows, cols), want, err_msg=type(conv).__name__)
    assert not np.array_equal(yuv_to_rgb(y, u, v, exact), sws_rgb(y, u, v, decord))


def _vector_specs(vectors_dir) -> dict[str, ViewSpec]:
    types = json.loads((vectors_dir / "preprocess" / "sample_types.json").read_text())
    return {name: ViewSpec.from_sample_type(name, opts) for name, opts in types.items()}


@pytest.mark.vectors
def test_emulated_geometry_reproduces_the_reference_views(vectors_dir):
    """The kernels' sampling (tables from the CPU plans, kernel order of operations) on
    upstream's own frames: equal to the CPU views, and to upstream's views within the vectors'
    tolerance (fragments exact; resized views, and fragments cut from an upsampled frame, within
    1 level and 99.9% exact). Cases are whatever the vector folder holds (``CASE/frames``);
    ``image`` is treated as an image, as the vectors' README says."""
    with np.load(vectors_dir / "preprocess" / "views.npz") as npz:
        data = {key: npz[key] for key in npz.files}
    specs = _vector_specs(vectors_dir)
    cases = sorted({key.split("/")[0] for key in data if key.endswith("/frames")})
    assert cases, "no view cases in the vectors"
    for case in cases:
        frames = data[f"{case}/frames"]
        n, h, w, _ = frames.shape
        image = case == "image"
        plans = plan_views(n, h, w, specs, is_image=image)
        cpu = build_views(dict(enumerate(frames)), n, specs, is_image=image)
        for name, spec in specs.items():
            tables = view_tables([plans[name]], {i: i for i in range(n)}, h, w)
            levels = emulate_levels(tables, RgbFrames(frames))[0]
            np.testing.assert_array_equal(levels, cpu[name], err_msg=f"{case}/{name}")
            ref = data[f"{case}/view/{name}"]
            diff = np.abs(levels.astype(int) - ref)
            upsampled = spec.kind == "fragments" and fragment_grid(h, w, spec).upsample is not None
            if spec.kind == "fragments" and not upsampled:
                assert diff.max() == 0, f"{case}/{name}"
            else:
                assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, f"{case}/{name}"


#: Views small enough to emulate quickly; the technical view keeps its official 7x7x32 grid,
#: so frames under 224 pixels take the upsampling path.
SMALL_SPECS = {
    "semantic": replace(OFFICIAL_VIEWS["semantic"], size_h=96, size_w=128),
    "technical": replace(OFFICIAL_VIEWS["technical"], clip_len=16, t_frag=8, aligned=8),
    "aesthetic": replace(OFFICIAL_VIEWS["aesthetic"], clip_len=16, t_frag=8, size_h=64, size_w=80),
}

#: (codec, pix_fmt, width, height, colorspace, color_range): 8-bit BT.601 limited (unsignalled)
#: big enough for raw fragments; 10-bit BT.709 full range (P016 on NVDEC) that is upsampled.
VIDEOS = {
    "h264-8bit": ("libx264", "yuv420p", 320, 240, None, None),
    "hevc-10bit-bt709-full": ("libx265", "yuv420p10le", 176, 112, 1, 2),
}


def _encode(path, codec, pix_fmt, width, height, colorspace, color_range, frames=30):
    """A textured moving pattern (so every sampling error shows), lossy-encoded."""
    rng = np.random.default_rng(7)
    pictures = [np.clip(pattern(height, width, t).astype(int) +
                        rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)
                for t in range(frames)]
    options = {"x265-params": "log-level=error"} if codec == "libx265" else {}
    return write_video(path, pictures, codec=codec, pix_fmt=pix_fmt, options=options,
                       colorspace=colorspace, color_range=color_range)


@pytest.fixture(scope="module", params=sorted(VIDEOS))
def video(request, tmp_path_factory):
    if not has_encoder(VIDEOS[request.param][0]):
        pytest.skip(f"FFmpeg has no {VIDEOS[request.param][0]} encoder here")
    return _encode(tmp_path_factory.mktemp("videos") / f"{request.param}.mkv",
                   *VIDEOS[request.param])


def _pyav_planes(path, indices) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Y, U, V code values of the wanted frames, decoded by PyAV (the CPU path's decoder)."""
    wanted, out = set(int(i) for i in indices), {}
    with av.open(str(path)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                dtype = np.dtype(np.uint8 if frame.format.components[0].bits <= 8 else "<u2")
                planes = []
                for p in frame.planes:
                    raw = np.frombuffer(p, dtype, count=p.line_size * p.height // dtype.itemsize)
                    planes.append(raw.reshape(p.height, -1)[:, :p.width].copy())
                out[k] = tuple(planes)
    return out


def _host_frames(path, info, needed, colour="decord") -> HostFrames:
    planes = _pyav_planes(path, needed)
    luma, chroma, shift = [], [], 0
    for index in needed.tolist():
        y, c, shift = semi_planar(*planes[index], info.bit_depth)
        luma.append(y)
        chroma.append(c)
    conv = frame_conversion(colour, info.matrix, info.full_range, info.bit_depth, info.height,
                            info.width, 1, 1)
    return HostFrames(luma, chroma, shift, conv)


def _plans(info, seed, clips):
    plans = [plan_views(info.num_frames, info.height, info.width, SMALL_SPECS,
                        rng=clip_rng(seed, k), clip=k, clips=clips) for k in range(clips)]
    needed = needed_frames(*({n: p.indices for n, p in plan.items()} for plan in plans))
    return plans, needed


@pytest.mark.parametrize("colour", ["decord", "exact"])
@pytest.mark.parametrize("seed,clips", [(None, 1), (3, 2)])
def test_emulated_views_equal_cpu_views(video, seed, clips, colour):
    """From the YUV planes NVDEC would hand over (NV12 / P016) to normalised views: the kernels'
    maths equals views.load_views exactly, clips, random offsets and both colour conversions
    included."""
    info = probe(video)
    plans, needed = _plans(info, seed, clips)
    host = _host_frames(video, info, needed, colour)
    slot_of = {int(i): s for s, i in enumerate(needed.tolist())}
    cpu, _ = load_views(video, SMALL_SPECS, seed=seed, clips=clips, colour=colour)
    for name in SMALL_SPECS:
        tables = view_tables([p[name] for p in plans], slot_of, info.height, info.width)
        assert tables.shape == cpu[name].shape
        np.testing.assert_array_equal(emulate_view(tables, host), cpu[name], err_msg=name)


def test_view_tables_follow_the_plans():
    spec = OFFICIAL_VIEWS["technical"]
    plans = [plan_views(100, 120, 200, {"technical": spec}, rng=clip_rng(5, k), clip=k,
                        clips=2)["technical"] for k in range(2)]
    needed = np.unique(np.concatenate([p.indices for p in plans]))
    slot_of = {int(i): s for s, i in enumerate(needed.tolist())}
    tables = view_tables(plans, slot_of, 120, 200)
    assert tables.shape == (2, 3, 40, 224, 224)
    assert tables.upsample  # 120 rows < 224: upstream's upsampled grid
    assert tables.origins.dtype == np.int32 and tables.origins.flags.c_contiguous
    assert tables.origins.shape == (2, 1, 2, 7, 7)
    np.testing.assert_array_equal(needed[tables.frame_of],
                                  np.concatenate([p.indices for p in plans]))
    assert len(tables.rows.index0) == plans[0].grid.frame_h
    with pytest.raises(ValueError, match="plan made for"):
        view_tables(plans, slot_of, 121, 200)


def test_packed_tables_keep_every_part_aligned_and_intact():
    plan = plan_views(50, 90, 160, {"technical": OFFICIAL_VIEWS["technical"]})["technical"]
    tables = view_tables([plan], {int(i): int(i) for i in plan.indices}, 90, 160)
    conv = yuv_to_rgb_coefficients("bt709", False, 8)
    packed, offsets = _packed_tables(tables, conv)
    assert all(off % 256 == 0 for off in offsets.values())

    def part(name, dtype, count):
        return packed[offsets[name]:offsets[name] + count * np.dtype(dtype).itemsize].view(dtype)

    np.testing.assert_array_equal(part("yuv", np.float32, 8), conv.as_array())
    np.testing.assert_array_equal(part("origins", np.int32, tables.origins.size),
                                  tables.origins.reshape(-1))
    np.testing.assert_array_equal(part("wrow", np.float32, len(tables.rows.weight)),
                                  tables.rows.weight)
    np.testing.assert_array_equal(part("frame_of", np.int32, len(tables.frame_of)),
                                  tables.frame_of)
    decord = sws_conversion("bt709", False, 8, 90, 160)
    packed, offsets = _packed_tables(tables, decord)
    np.testing.assert_array_equal(part("sws", np.int32, decord.ints.size), decord.ints)
    np.testing.assert_array_equal(part("sws_rows", np.int32, 90), decord.rows)
    np.testing.assert_array_equal(part("sws_cols", np.int32, 160 * 3), decord.cols.reshape(-1))


def _c_parameters(kernel: str) -> list[tuple[str, str]]:
    """``(kind, name)`` of each parameter of an ``extern "C"`` kernel in views.cu; kind is
    ``ptr``, ``int32``, ``int64`` or ``float32``."""
    source = kernel_files.kernel_source("views.cu")
    match = re.search(rf'extern "C" __global__ void {kernel}\((.*?)\)\s*{{', source, re.S)
    params = []
    for decl in " ".join(match.group(1).split()).split(","):
        *words, name = decl.replace("*", " * ").split()
        kind = "ptr" if "*" in words else {"int": "int32", "long long": "int64",
                                            "float": "float32"}[" ".join(words)]
        params.append((kind, name))
    return params


class _Recorder:
    def __init__(self):
        self.calls = []

    def launch(self, grid, block, args, stream):
        self.calls.append((grid, block, args))


class _HostBuffer:
    """Host memory standing in for a device buffer (its address is a real one)."""

    def __init__(self, nbytes):
        self.memory = np.zeros(nbytes, np.uint8)
        self.ptr, self.nbytes = self.memory.ctypes.data, nbytes

    def upload(self, array, stream=None, offset=0):
        self.memory[offset:offset + array.nbytes] = array.view(np.uint8).reshape(-1)


@pytest.mark.parametrize("colour", ["decord", "exact"])
@pytest.mark.parametrize("size", [(240, 320), (112, 176)], ids=["raw", "upsampled"])
def test_launch_arguments_follow_the_kernel_signatures(monkeypatch, size, colour):
    """Every argument the host passes has the type of the C parameter at its position, and each
    table pointer points at that parameter's table (matched by the parameter's name)."""
    from types import SimpleNamespace

    from cover_engine.runtime.gpu.pipeline import ViewKernels

    monkeypatch.setattr(gpu, "DeviceBuffer", _HostBuffer)
    kernels = ViewKernels.__new__(ViewKernels)
    kernels.resize, kernels.fragments = _Recorder(), _Recorder()
    kernels.pool = gpu.DevicePool()
    conv = frame_conversion(colour, "bt709", False, 10, size[0], size[1], 1, 1)
    frames = SimpleNamespace(luma_table=111, chroma_table=222, luma_pitch=512, chroma_pitch=512,
                             height=size[0], width=size[1], sample_bytes=2, sample_shift=6,
                             conv=conv)
    plans = [plan_views(40, *size, SMALL_SPECS, rng=clip_rng(1, k), clip=k, clips=2)
             for k in range(2)]
    needed = needed_frames(*({n: p.indices for n, p in plan.items()} for plan in plans))
    slot_of = {int(i): s for s, i in enumerate(needed.tolist())}
    for name, spec in SMALL_SPECS.items():
        tables = view_tables([p[name] for p in plans], slot_of, *size)
        out_shape = (3,) + tables.shape[1:]  # a batch of 3 holding 2 clips
        held = kernels.launch(frames, tables, 999, "float16", out_shape, stream=None)
        recorder = kernels.resize if spec.kind == "resize" else kernels.fragments
        grid, block, args = recorder.calls[-1]
        params = _c_parameters("cover_resize_view" if spec.kind == "resize"
                               else "cover_fragments_view")
        assert [k for k, _ in params] == ["ptr" if isinstance(a, np.uint64) else a.dtype.name
                                          for a in args], name
        value = {n: a for (_, n), a in zip(params, args)}
        assert grid == (-(-spec.out_w // block[0]), -(-spec.out_h // block[1]), 2 * spec.clip_len)

        def table(param, dtype, count):
            offset = int(value[param]) - held.ptr
            memory = held.buffer.memory
            return memory[offset:offset + count * np.dtype(dtype).itemsize].view(dtype)

        if colour == "exact":
            assert value["sws_path"] == -1
            np.testing.assert_array_equal(table("yuv", np.float32, 8), conv.as_array())
        else:
            assert value["sws_path"] == 1  # 10 bits: the table path
            np.testing.assert_array_equal(table("sws", np.int32, conv.ints.size), conv.ints)
            np.testing.assert_array_equal(table("sws_rows", np.int32, size[0]), conv.rows)
            np.testing.assert_array_equal(table("sws_cols", np.int32, 3 * size[1]),
                                          conv.cols.reshape(-1))
        np.testing.assert_array_equal(table("norm", np.float32, 6), tables.norm)
        np.testing.assert_array_equal(table("frame_of", np.int32, 2 * spec.clip_len),
                                      tables.frame_of)
        prefix = "" if spec.kind == "resize" else "up_"
        for axis, taps in (("rows", tables.rows), ("cols", tables.cols)):
            n = len(taps.index0)
            np.testing.assert_array_equal(table(f"{prefix}{axis}0", np.int32, n), taps.index0)
            np.testing.assert_array_equal(table(f"{prefix}{axis}1", np.int32, n), taps.index1)
            np.testing.assert_array_equal(table(f"{prefix}w{axis[:3]}", np.float32, n),
                                          taps.weight)
        assert (value["luma"], value["chroma"], value["sample_shift"]) == (111, 222, 6)
        assert (value["out"], value["out_half"], value["frames"]) == (999, 1, spec.clip_len)
        t, h, w = tables.shape[2:]
        assert (value["stride_clip"], value["stride_c"], value["stride_t"]) == \
            (3 * t * h * w, t * h * w, h * w)
        if spec.kind == "fragments":
            assert value["upsample"] == (size[0] < 224)
            np.testing.assert_array_equal(table("origins", np.int32, tables.origins.size),
                                          tables.origins.reshape(-1))
            assert (value["fragments_h"], value["fsize_w"], value["aligned"]) == (7, 32, 8)
        held.close()
    # three launches, each lease handed back: the pool reuses a buffer of the right size
    assert kernels.pool.leased == 0 and kernels.pool.allocations < len(SMALL_SPECS)
    with pytest.raises(ValueError, match="does not fit the input buffer"):
        kernels.launch(frames, tables, 999, "float32", (1,) + tables.shape[1:], stream=None)


# ------------------------------------------------------------------------------ on a GPU


def _levels(normalised: np.ndarray, spec: ViewSpec) -> np.ndarray:
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1, 1)
    return np.rint(normalised.astype(np.float32) * std + mean)


@pytest.mark.gpu
@pytest.mark.parametrize("colour", ["decord", "exact"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_kernels_make_the_cpu_views(video, dtype, colour):
    from cover_engine.runtime.gpu.pipeline import ViewKernels
    from cover_engine.runtime.gpu.nvdec import upload_frames

    info = probe(video)
    plans, needed = _plans(info, seed=3, clips=2)
    host = _host_frames(video, info, needed, colour)
    slot_of = {int(i): s for s, i in enumerate(needed.tolist())}
    cpu, _ = load_views(video, SMALL_SPECS, seed=3, clips=2, colour=colour)
    gpu.use_device(0)
    stream = gpu.Stream()
    frames = upload_frames(host, needed, stream)
    kernels = ViewKernels()
    for name, spec in SMALL_SPECS.items():
        tables = view_tables([p[name] for p in plans], slot_of, info.height, info.width)
        out = np.empty(tables.shape, dtype)
        with gpu.DeviceBuffer(out.nbytes) as buf:
            held = kernels.launch(frames, tables, buf.ptr, dtype, out.shape, stream)
            stream.synchronize()
            buf.download(out)
            held.close()
        diff = np.abs(_levels(out, spec) - _levels(cpu[name], spec))
        assert diff.max() <= 2 and (diff == 0).mean() >= 0.999, name
        if dtype == "float32":  # same maths, same order: expected bit for bit
            np.testing.assert_array_equal(out, emulate_view(tables, host), err_msg=name)
    frames.close()
    stream.close()


@pytest.mark.gpu
def test_nvdec_frames_equal_pyav_frames(video, nvdec_required):
    """NVDEC must take these files (no skip and no CPU fallback on a GPU with PyNvVideoCodec)
    and hand over exactly the code values PyAV decodes."""
    from cover_engine.runtime.gpu.nvdec import NvdecDecoder, nvdec_refusal

    info = probe(video)
    assert nvdec_refusal(info) is None
    _, needed = _plans(info, seed=None, clips=1)
    gpu.use_device(0)
    stream = gpu.Stream()
    frames = NvdecDecoder().decode(video, needed, info, stream=stream)
    stream.synchronize()
    want = _host_frames(video, info, needed)
    for slot in range(len(needed)):
        luma, chroma = frames.download(slot)
        np.testing.assert_array_equal(luma, want.luma[slot], err_msg=f"frame {needed[slot]} Y")
        np.testing.assert_array_equal(chroma, want.chroma[slot], err_msg=f"frame {needed[slot]} UV")
    assert frames.sample_shift == want.sample_shift
    frames.close()
    stream.close()
