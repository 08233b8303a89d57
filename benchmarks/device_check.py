"""One-call check of the whole GPU path, for a machine with an NVIDIA GPU (and a user's self-test).

    python3 benchmarks/device_check.py --out device-check/
    python3 benchmarks/device_check.py --wheels wheels/ --out device-check/   # no network

Steps, each timed, each ``ok``, ``fail`` or ``skipped`` with the reason (a missing GPU, driver
library, package or tool skips the steps that need it; nothing stops the others):

1. ``wheels``: with ``--wheels DIR``, install PyNvVideoCodec and PyAV from the wheels in DIR
   (``pip install --no-index``) where they are not importable yet. Fetch them beforehand with
   ``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
   manylinux_2_28_x86_64 --dest DIR "PyNvVideoCodec==2.2.4" "av==18.1.0"``.
2. ``environment``: GPU, driver, CUDA runtime and NVRTC versions, PyNvVideoCodec, TensorRT,
   torch, and ``NVIDIA_DRIVER_CAPABILITIES`` (NVDEC needs ``video`` in a container).
3. ``decoder caps``: ``GetDecoderCaps`` for H.264, HEVC, VP9 and AV1 at 8, 10 and 12 bits.
4. ``clip:*``: small generated clips -- H.264 with B-frames, HEVC 10- and 12-bit, VP9 with odd
   width and height, interlaced H.264. Each says which path decodes it (NVDEC, or the CPU and
   why); NVDEC's planes are compared with PyAV's and the kernels' views with the CPU views, bit
   for bit, for each ``--colour`` conversion. The interlaced clip must take the CPU path.
5. ``pytest -m gpu`` over the suite, and ``compute-sanitizer`` (memcheck) over the kernel tests.
6. ``torch``: branch scores with ``--backend torch`` on CUDA in fp32, fp16 and bf16 against
   fp32 on the CPU (the reference vectors' model when ``$COVER_VECTORS`` has it, else the
   official architecture with seeded random weights).
7. ``bench:h264`` / ``bench:hevc``: ``cover-bench --resolution 4k --frames 30`` with the torch
   rows that need no engine build and no minutes of compiling (pass ``--engines DIR`` for the
   ONNX Runtime and TensorRT rows, ``--bench-backends`` for others).

Writes ``device_check.json`` (every figure and reason) and ``summary.txt`` (what a person reads)
into ``--out``, prints the summary, and exits 1 if any step failed.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import click

__all__ = ["main", "Step", "Skip", "CLIPS", "make_clips", "run_check"]

REPO = Path(__file__).resolve().parent.parent
#: Codecs and bit depths whose NVDEC support is listed (GetDecoderCaps).
CAPS_CODECS = ("H264", "HEVC", "VP9", "AV1")
CAPS_DEPTHS = (8, 10, 12)
#: Rows of cover-bench that need no engine build (those that do come with --engines);
#: torch-fp16-compile is left out by default: compiling the model takes minutes.
BENCH_ROWS = "torch-fp32,torch-fp16,torch-bf16,torch-fp16-graphs"


class Skip(Exception):
    """The step cannot run here; the message says why."""


@dataclass
class Step:
    name: str
    status: str = "ok"          # ok | fail | skipped
    reason: str = ""
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ClipSpec:
    codec: str                  # PyAV encoder
    pix_fmt: str
    width: int
    height: int
    options: dict
    expect: str                 # "nvdec", or "cpu:<word the CPU path's reason contains>"
    container: str = "mkv"
    frames: int = 40


CLIPS: dict[str, ClipSpec] = {
    "h264-bframes": ClipSpec("libx264", "yuv420p", 320, 240, {"bf": "3", "g": "12", "crf": "18"},
                             "nvdec", "mp4"),
    "hevc-10bit": ClipSpec("libx265", "yuv420p10le", 256, 144,
                           {"x265-params": "log-level=error", "crf": "18"}, "nvdec"),
    "hevc-12bit": ClipSpec("libx265", "yuv420p12le", 256, 144,
                           {"x265-params": "log-level=error", "crf": "18"}, "nvdec"),
    "vp9-odd": ClipSpec("libvpx-vp9", "yuv420p", 175, 117,
                        {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"},
                        "nvdec", "webm"),
    "h264-interlaced": ClipSpec("libx264", "yuv420p", 320, 240,
                                {"flags": "+ilme+ildct", "x264-params": "interlaced=1:tff=1",
                                 "crf": "18"}, "cpu:interlaced"),
}


def _one_line(exc: BaseException) -> str:
    """The project's own errors as their message; anything else with its type."""
    from cover_engine.runtime.errors import one_line

    return one_line(exc)[:400] or type(exc).__name__


class Check:
    """Runs steps, records them, never lets one step stop the others."""

    def __init__(self, out: Path, log: Callable[[str], None] = print):
        self.out, self.log = out, log
        self.steps: list[Step] = []

    def run(self, name: str, fn: Callable[[], Optional[dict]]) -> Step:
        step = Step(name)
        start = time.perf_counter()
        try:
            step.details = fn() or {}
            if step.details.pop("_failed", None):
                step.status, step.reason = "fail", step.details.pop("_why", "see details")
        except Skip as why:
            step.status, step.reason = "skipped", str(why)
        except Exception as exc:  # one failing step is reported; the others still run
            step.status, step.reason = "fail", _one_line(exc)
        step.seconds = round(time.perf_counter() - start, 2)
        self.steps.append(step)
        self.log(f"[{step.status}] {name} ({step.seconds:.1f} s)"
                 + (f": {step.reason}" if step.reason else ""))
        return step


# ------------------------------------------------------------------------------ environment


def install_wheels(folder: Path) -> dict:
    """Install PyNvVideoCodec and PyAV from ``folder`` where they are not importable yet."""
    if not folder.is_dir():
        raise Skip(f"{folder} is not a folder")
    wanted = {"PyNvVideoCodec": "pynvvideocodec", "av": "av"}
    missing = [name for name, module in (("PyNvVideoCodec", "PyNvVideoCodec"), ("av", "av"))
               if not _importable(module)]
    if not missing:
        raise Skip("PyNvVideoCodec and PyAV are already installed")
    wheels = [str(w) for w in sorted(folder.glob("*.whl"))
              if any(w.name.lower().startswith(wanted[m] + "-") for m in missing)]
    if not wheels:
        raise Skip(f"no wheel for {', '.join(missing)} in {folder}")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                           *wheels], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"installed": [Path(w).name for w in wheels]}


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # ImportError, or a module that cannot start (no driver): not usable
        return False


def _version(module: str, distribution: Optional[str] = None) -> Optional[str]:
    """The installed version, or why the module cannot be used."""
    from importlib import metadata

    try:
        found = getattr(__import__(module), "__version__", None)
    except Exception as exc:
        return f"unusable ({_one_line(exc)[:120]})"
    if found is None:
        try:
            found = metadata.version(distribution or module)
        except metadata.PackageNotFoundError:
            found = "installed"
    return str(found)


def environment() -> dict:
    from cover_engine.runtime.gpu import cuda as gpu

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "NVIDIA_DRIVER_CAPABILITIES": os.environ.get("NVIDIA_DRIVER_CAPABILITIES"),
        "versions": {m: _version(m) for m in ("numpy", "av", "torch", "onnxruntime",
                                               "tensorrt", "PyNvVideoCodec")},
    }
    try:
        driver, runtime, nvrtc = gpu.cuda_api()
        info["versions"]["cuda-bindings"] = _version("cuda.bindings", "cuda-bindings")
        info["nvrtc"] = ".".join(str(v) for v in gpu.nvrtc_version())
        status, version = runtime.cudaDriverGetVersion()
        info["driver_cuda"] = f"{version // 1000}.{version % 1000 // 10}" if version else None
        status, version = runtime.cudaRuntimeGetVersion()
        info["runtime_cuda"] = f"{version // 1000}.{version % 1000 // 10}" if version else None
    except Exception as exc:
        info["cuda_python"] = _one_line(exc)
    info["gpu_available"] = gpu.gpu_available()
    if info["gpu_available"]:
        info["gpu"] = gpu.device_name(0)
        info["compute_capability"] = "%d.%d" % gpu.compute_capability(0)
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return info


def gpu_missing() -> Optional[str]:
    """Why the GPU steps cannot run (``None`` when a CUDA GPU is usable)."""
    from cover_engine.runtime.gpu import cuda as gpu

    try:
        gpu.cuda_api()
    except Exception as exc:
        return _one_line(exc)
    if not gpu.gpu_available():
        return "no CUDA GPU is usable here (driver or device missing)"
    return None


def nvdec_missing() -> Optional[str]:
    from cover_engine.runtime.gpu.nvdec import _pynvvideocodec

    reason = gpu_missing()
    if reason:
        return reason
    module, why = _pynvvideocodec()
    return None if module is not None else why


def decoder_caps() -> dict:
    """``GetDecoderCaps`` for each codec and bit depth (4:2:0), as the driver answers."""
    from cover_engine.runtime.gpu.nvdec import import_pynvvideocodec

    reason = nvdec_missing()
    if reason:
        raise Skip(reason)
    nvc = import_pynvvideocodec()
    codecs, chromas = nvc.cudaVideoCodec, nvc.cudaVideoChromaFormat
    chroma = next((getattr(chromas, n) for n in dir(chromas) if "420" in n), None)
    if chroma is None:
        members = getattr(chromas, "__members__", {})
        chroma = next((v for k, v in members.items() if "420" in k), None)
    out: dict[str, Any] = {}
    for codec in CAPS_CODECS:
        for depth in CAPS_DEPTHS:
            key = f"{codec} {depth}-bit"
            try:
                caps = nvc.GetDecoderCaps(gpuid=0, codec=getattr(codecs, codec),
                                          chromaformat=chroma, bitdepth=depth)
                out[key] = {k: (v if isinstance(v, (int, float, bool)) else str(v))
                            for k, v in dict(caps or {}).items()} or "not supported"
            except Exception as exc:
                out[key] = f"error: {_one_line(exc)}"
    return out


# ------------------------------------------------------------------------------ clips


def make_clips(folder: Path, names=None) -> dict[str, Path]:
    """Encode the :data:`CLIPS` (or ``names`` of them) that this FFmpeg has encoders for."""
    import av
    import numpy as np

    from cover_engine.bench.clips import synthetic_frame

    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in names or CLIPS:
        spec = CLIPS[name]
        try:
            av.codec.Codec(spec.codec, "w")
        except Exception:
            continue
        path = folder / f"{name}.{spec.container}"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(spec.codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
            stream.options = dict(spec.options)
            for i in range(spec.frames):
                rgb = synthetic_frame(spec.width, spec.height, i, seed=7)
                noise = np.random.default_rng(i).integers(-6, 7, rgb.shape)
                rgb = np.clip(rgb.astype(int) + noise, 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        made[name] = path
    return made


def _pyav_planes(path, indices) -> dict:
    import av
    import numpy as np

    wanted, out = set(int(i) for i in indices), {}
    with av.open(str(path)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                dtype = np.dtype(np.uint8 if frame.format.components[0].bits <= 8 else "<u2")
                out[k] = [np.frombuffer(p, dtype, count=p.line_size * p.height // dtype.itemsize)
                          .reshape(p.height, -1)[:, :p.width] for p in frame.planes]
    return out


def check_clip(name: str, path: Path, specs=None) -> dict:
    """Which path decodes the clip, NVDEC's planes against PyAV's, kernels against CPU views
    (``specs``: the views to make, the official ones by default)."""
    import numpy as np

    from cover_engine.runtime.constants import COLOUR_MODES, OFFICIAL_VIEWS
    from cover_engine.runtime.gpu.nvdec import NvdecDecoder, NvdecUnavailable, nvdec_refusal
    from cover_engine.runtime.media.decode import probe
    from cover_engine.runtime.views.assemble import load_views, plan_views
    from cover_engine.runtime.views.sampling import clip_rng, needed_frames

    spec = CLIPS[name]
    info = probe(path)
    details: dict[str, Any] = {"file": str(path), "codec": info.codec, "pix_fmt": info.pix_fmt,
                               "size": f"{info.width}x{info.height}", "frames": info.num_frames,
                               "interlaced": info.interlaced, "expected": spec.expect}
    refusal = nvdec_refusal(info)
    if spec.expect.startswith("cpu:"):
        word = spec.expect[4:]
        details["path"] = f"cpu ({refusal})" if refusal else "nvdec"
        if not refusal or word not in refusal:
            details.update(_failed=True, _why=f"expected the CPU path ({word}), got "
                                               f"{details['path']}")
        return details
    reason = nvdec_missing()
    if reason:
        raise Skip(f"{reason} (clip made and probed: {details['size']} {info.pix_fmt})")
    if refusal:
        details.update(path=f"cpu ({refusal})", _failed=True, _why=f"NVDEC not used: {refusal}")
        return details
    from cover_engine.runtime.gpu import cuda as gpu
    from cover_engine.runtime.gpu.pipeline import ViewKernels
    from cover_engine.runtime.gpu.tables import view_tables

    specs = dict(specs or OFFICIAL_VIEWS)
    plans = [plan_views(info.num_frames, info.height, info.width, specs, rng=clip_rng(3, k),
                        clip=k, clips=2) for k in range(2)]
    needed = needed_frames(*({n: p.indices for n, p in plan.items()} for plan in plans))
    gpu.use_device(0)
    stream = gpu.Stream()
    decoder = NvdecDecoder()
    kernels = ViewKernels()
    slot_of = {int(i): s for s, i in enumerate(needed.tolist())}
    want = _pyav_planes(path, needed)
    bad_planes, views = 0, {}
    for colour in COLOUR_MODES:  # both conversions run in the kernels
        try:
            frames = decoder.decode(path, needed, info, stream=stream, colour=colour)
        except NvdecUnavailable as exc:
            details.update(path=f"cpu ({exc})", _failed=True, _why=f"NVDEC not used: {exc}")
            return details
        stream.synchronize()
        details["path"] = "nvdec"
        if colour == COLOUR_MODES[0]:
            shift = frames.sample_shift
            for slot, index in enumerate(needed.tolist()):
                luma, chroma = frames.download(slot)
                y, u, v = want[index]
                bad_planes += int(not np.array_equal(luma >> shift, y))
                bad_planes += int(not np.array_equal(chroma[:, 0::2] >> shift, u))
                bad_planes += int(not np.array_equal(chroma[:, 1::2] >> shift, v))
        cpu, _ = load_views(path, specs, seed=3, clips=2, colour=colour)
        for view_name in specs:
            tables = view_tables([p[view_name] for p in plans], slot_of, info.height,
                                 info.width)
            out = np.empty(tables.shape, np.float32)
            with gpu.DeviceBuffer(out.nbytes) as buf:
                lease = kernels.launch(frames, tables, buf.ptr, "float32", out.shape, stream)
                stream.synchronize()
                buf.download(out)
                lease.close()
            views[f"{colour}/{view_name}"] = {
                "bit_identical": bool(np.array_equal(out, cpu[view_name])),
                "max_abs_diff": float(np.abs(out - cpu[view_name]).max())}
        frames.close()
    decoder.close()
    stream.close()
    details["planes_compared"] = 3 * len(needed)
    details["planes_different"] = bad_planes
    details["views"] = views
    if bad_planes or not all(v["bit_identical"] for v in views.values()):
        details.update(_failed=True, _why=f"{bad_planes} planes differ from PyAV; views "
                       f"identical: { {k: v['bit_identical'] for k, v in views.items()} }")
    return details


# ------------------------------------------------------------------------------ tools


def run_pytest(args: list[str], timeout: int, prefix: list[str] = ()) -> dict:
    reason = gpu_missing()
    if reason:
        raise Skip(reason)
    command = [*prefix, sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
               *args]
    env = dict(os.environ)
    env.setdefault("COVER_VECTORS", str(REPO.parent / "shared" / "cover-vectors"))
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command), "_failed": True,
                "_why": f"timed out after {timeout} s"}
    tail = (done.stdout + done.stderr).strip().splitlines()[-25:]
    out = {"command": " ".join(command), "exit_code": done.returncode,
           "summary": tail[-1] if tail else "", "tail": tail}
    if done.returncode != 0:
        out.update(_failed=True, _why=out["summary"] or f"exit code {done.returncode}")
    return out


def sanitizer(timeout: int) -> dict:
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        raise Skip("compute-sanitizer is not on PATH (it comes with the CUDA toolkit)")
    return run_pytest(["-m", "gpu", "tests/test_kernels.py"], timeout,
                      prefix=[tool, "--tool", "memcheck", "--error-exitcode", "99",
                              "--target-processes", "all"])


def torch_scores(clip: Optional[Path]) -> dict:
    """Branch scores of torch on CUDA (fp32, fp16, bf16) against fp32 on the CPU."""
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install -e '.[export]')") from None
    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA GPU")
    from cover_engine.export.backend_torch import TorchBackend, build_model
    from cover_engine.export.config import ModelConfig
    from cover_engine.export.weights import load_model
    from cover_engine.runtime.results import branch_scores
    from cover_engine.runtime.views.assemble import load_views

    vectors = Path(os.environ.get("COVER_VECTORS", REPO.parent / "shared" / "cover-vectors"))
    if (vectors / "model" / "config.json").is_file():
        config = ModelConfig.from_json(vectors / "model" / "config.json")
        model = load_model(config, vectors / "model" / "cover.pth", vectors / "model" / "clip.pt")
        which = f"reference vectors' model ({vectors})"
    else:
        model, config = build_model(None, random_weights=True)
        which = "official architecture, random weights (seed 0)"
    cpu = TorchBackend(model=model, config=config)
    if clip is not None:
        views, _ = load_views(clip, cpu.specs)
    else:
        import numpy as np
        with np.load(vectors / "model" / "io.npz") as data:
            views = {b: data[f"video/input/{b}"] for b in cpu.specs}
    want = {k: float(v.mean()) for k, v in branch_scores(cpu.run(views)).items()}
    out: dict[str, Any] = {"model": which, "cpu_fp32": want}
    worst = 0.0
    for precision in ("fp32", "fp16", "bf16"):
        backend = TorchBackend(model=model, config=config, device="cuda", precision=precision)
        got = {k: float(v.mean()) for k, v in branch_scores(backend.run(views)).items()}
        diff = max(abs(got[k] - want[k]) for k in want)
        out[f"cuda_{precision}"] = {"scores": got, "max_abs_diff": diff}
        worst = max(worst, diff if precision == "fp32" else 0.0)
        model.cpu()
    if worst > 1e-2:
        out.update(_failed=True, _why=f"fp32 on CUDA differs from the CPU by {worst:.4g}")
    return out


def bench(codec: str, out: Path, backends: str, engines: Optional[Path], timeout: int) -> dict:
    reason = gpu_missing()
    if reason:
        raise Skip(reason)
    report = out / f"bench-{codec}.json"
    command = [sys.executable, "-m", "cover_engine.runtime.cli.bench", "--resolution", "4k",
               "--frames", "30", "--codec", codec, "--backends", backends, "--runs", "3",
               "--warmup", "1", "--json", str(report)]
    if engines is not None:
        command += ["--engines", str(engines)]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command), "_failed": True,
                "_why": f"timed out after {timeout} s"}
    details: dict[str, Any] = {"command": " ".join(command), "exit_code": done.returncode,
                               "table": done.stdout.strip().splitlines()[-20:]}
    if report.is_file():
        data = json.loads(report.read_text())
        details["rows"] = {r.get("name", "?"): {k: r.get(k) for k in ("status", "reason")
                                                if k in r} for r in data.get("backends", [])}
        details["report"] = str(report)
    if done.returncode != 0:
        details.update(_failed=True, _why=(done.stderr.strip().splitlines() or ["?"])[-1])
    return details


# ------------------------------------------------------------------------------ report


def summary(steps: list[Step], env: dict) -> str:
    lines = [f"cover-engine device check, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"GPU: {env.get('gpu') or env.get('nvidia_smi') or 'none usable'}; driver CUDA "
             f"{env.get('driver_cuda')}; NVRTC {env.get('nvrtc')}; PyNvVideoCodec "
             f"{env.get('versions', {}).get('PyNvVideoCodec')}; TensorRT "
             f"{env.get('versions', {}).get('tensorrt')}", ""]
    width = max(len(s.name) for s in steps)
    for s in steps:
        note = s.reason
        if s.name.startswith("clip:") and "path" in s.details:
            note = f"decoded by {s.details['path']}" + (f"; {s.reason}" if s.reason else "")
            if "planes_different" in s.details:
                note += (f"; planes differing from PyAV: {s.details['planes_different']}/"
                         f"{s.details['planes_compared']}; views bit-identical: "
                         + ", ".join(f"{k} {v['bit_identical']}"
                                     for k, v in s.details["views"].items()))
        lines.append(f"{s.status:>7}  {s.name:<{width}}  {s.seconds:6.1f} s  {note}")
    counts = {k: sum(s.status == k for s in steps) for k in ("ok", "fail", "skipped")}
    lines += ["", f"{counts['ok']} ok, {counts['fail']} failed, {counts['skipped']} skipped"]
    return "\n".join(lines)


def run_check(out: Path, *, wheels: Optional[Path] = None, engines: Optional[Path] = None,
              bench_backends: str = BENCH_ROWS, skip: tuple[str, ...] = (),
              pytest_timeout: int = 150, bench_timeout: int = 120,
              log: Callable[[str], None] = print) -> tuple[list[Step], dict]:
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, log)
    if wheels is not None:
        check.run("wheels", lambda: install_wheels(wheels))
    env_step = check.run("environment", environment)
    check.run("decoder caps", decoder_caps)
    clips = make_clips(out / "clips")
    for name in CLIPS:
        if name not in clips:
            check.steps.append(Step(f"clip:{name}", "skipped",
                                    f"this FFmpeg has no {CLIPS[name].codec} encoder"))
            continue
        check.run(f"clip:{name}", lambda name=name: check_clip(name, clips[name]))
    if "pytest" not in skip:
        check.run("pytest -m gpu", lambda: run_pytest(["-m", "gpu"], pytest_timeout))
    if "sanitizer" not in skip:
        check.run("compute-sanitizer", lambda: sanitizer(pytest_timeout))
    if "torch" not in skip:
        check.run("torch fp32/fp16/bf16 vs CPU", lambda: torch_scores(clips.get("h264-bframes")))
    if "bench" not in skip:
        backends = bench_backends + (",onnxruntime,tensorrt" if engines else "")
        for codec in ("h264", "hevc"):
            check.run(f"bench:{codec}", lambda codec=codec: bench(codec, out, backends, engines,
                                                                 bench_timeout))
    env = env_step.details
    report = {"tool": "device_check", "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "command": " ".join(sys.argv), "environment": env,
        "steps": [asdict(s) for s in check.steps]}
    (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = summary(check.steps, env)
    (out / "summary.txt").write_text(text + "\n")
    return check.steps, report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("device-check"), show_default=True,
              help="Folder for device_check.json, summary.txt, the clips and bench reports.")
@click.option("--wheels", type=click.Path(file_okay=False, path_type=Path),
              help="Install PyNvVideoCodec / PyAV from the wheels in this folder (no network).")
@click.option("--engines", type=click.Path(file_okay=False, path_type=Path),
              help="Engine folder for the bench's ONNX Runtime and TensorRT rows.")
@click.option("--bench-backends", default=BENCH_ROWS, show_default=True,
              help="cover-bench rows (--engines adds onnxruntime,tensorrt).")
@click.option("--skip", "skip", multiple=True,
              type=click.Choice(["pytest", "sanitizer", "torch", "bench"]),
              help="Leave out a step (repeatable).")
@click.option("--pytest-timeout", type=click.IntRange(min=10), default=150, show_default=True)
@click.option("--bench-timeout", type=click.IntRange(min=10), default=120, show_default=True)
def main(out, wheels, engines, bench_backends, skip, pytest_timeout, bench_timeout):
    """Check the GPU path end to end and write a JSON report and a readable summary."""
    steps, _ = run_check(out, wheels=wheels, engines=engines, bench_backends=bench_backends,
                         skip=tuple(skip), pytest_timeout=pytest_timeout,
                         bench_timeout=bench_timeout, log=lambda m: click.echo(m, err=True))
    click.echo((out / "summary.txt").read_text().rstrip())
    click.echo(f"report: {out / 'device_check.json'}")
    sys.exit(1 if any(s.status == "fail" for s in steps) else 0)


if __name__ == "__main__":
    try:
        import cover_engine  # noqa: F401
    except ImportError:
        sys.exit("device_check: cover-engine is not installed here; "
                 "run `pip install -e '.[export]'` in the checkout first")
    main()
