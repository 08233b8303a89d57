"""TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API), kept thin.

One engine (``<graph>.plan``) per ONNX graph, in the style of Polygraphy's loaders: parse the
ONNX file, make a builder config, build a serialized engine, save it.

* Precision comes from the graph: the network is created **strongly typed**, so TensorRT keeps
  the types the ONNX graph spells out -- fp16 everywhere except the fp32 LayerNorm, softmax and
  reductions of :func:`~.onnx_passes.convert_to_fp16` -- exactly what ONNX Runtime verified.
  (Strong typing is TensorRT 10's recommended mode and the only one in TensorRT 11, where
  ``BuilderFlag.FP16`` is gone.) An fp32 graph is built with TF32 off, to stay within the fp32
  tolerance.
* One optimisation profile per engine: every input's batch axis from ``batch["min"]`` to
  ``batch["max"]``, tuned for ``batch["opt"]``; other axes fixed.
* A timing cache file (default ``<out>/timing.cache``) is loaded before each build and saved
  after it, so the three graphs share layer timings and a re-export on the same GPU and
  TensorRT version is much faster.

The GPU name, compute capability and TensorRT version go into the manifest: an engine only runs
on the GPU model and TensorRT version it was built with, and the runtime refuses others
(:func:`~cover_engine.runtime.engines.manifest.check_tensorrt`).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from cover_engine.runtime.errors import EngineError
from cover_engine.runtime.engines.identity import engine_name
from cover_engine.runtime.engines.manifest import EngineRef, FileRef, GraphEntry, TensorRTInfo, TensorSpec
from cover_engine.runtime.engines.trt_runner import import_tensorrt  # noqa: F401 (used as trt_build.import_tensorrt)

PROFILE_KEYS = ("min", "opt", "max")

Profiles = dict[str, dict[str, tuple[int, ...]]]


def profile_shapes(inputs: Sequence[TensorSpec], batch: Mapping[str, int]) -> Profiles:
    """``{input: {"min"|"opt"|"max": shape}}``: the batch axis over ``batch``, others fixed."""
    if not 1 <= batch["min"] <= batch["opt"] <= batch["max"]:
        raise EngineError(f"bad batch range {dict(batch)}: need 1 <= min <= opt <= max")
    return {t.name: {k: t.with_batch(batch[k]) for k in PROFILE_KEYS} for t in inputs}


def device_info(device: int = 0) -> tuple[str, str]:
    """``(GPU name, "major.minor" compute capability)`` of the build GPU."""
    try:
        from cover_engine.runtime.gpu import cuda as gpu

        name, (major, minor) = gpu.device_name(device), gpu.compute_capability(device)
    except Exception:  # no cuda-python: torch knows the same device
        import torch

        if not torch.cuda.is_available():
            raise EngineError("TensorRT engines need an NVIDIA GPU, and none is visible") from None
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
    return name, f"{major}.{minor}"


def parse_onnx(trt, onnx_path: Path, logger):
    """``(builder, network, parser)`` for a strongly typed network parsed from the file.

    ``parse_from_file`` (not ``parse`` on bytes) so that external weight files are found.
    """
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser rejects it: "
                          f"{errors or 'no detail'}")
    return builder, network, parser


def create_config(trt, builder, network, profiles: Profiles, *, precision: str,
                  timing_cache: Optional[bytes] = None, workspace: Optional[int] = None):
    """Builder config with one optimisation profile and the timing cache attached.

    Returns ``(config, cache)``; serialise ``cache`` after the build to keep new timings.
    """
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(profiles):
        raise EngineError(f"network inputs {names} do not match the profile's {sorted(profiles)}")
    config = builder.create_builder_config()
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profile = builder.create_optimization_profile()
    for name in names:
        shapes = profiles[name]
        profile.set_shape(name, *(shapes[k] for k in PROFILE_KEYS))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache or b"")
    if not config.set_timing_cache(cache, False):
        raise EngineError("TensorRT refused the timing cache (made by another TensorRT version "
                          "or GPU?); delete it and export again")
    return config, cache


def build_engine(trt, onnx_path: Path, engine_path: Path, profiles: Profiles, *, precision: str,
                 timing_cache_path: Optional[Path] = None, workspace: Optional[int] = None,
                 logger=None, name: Optional[str] = None) -> None:
    """Build and save one engine; the timing cache file is read before and rewritten after.

    ``name`` becomes the network's name, which the engine keeps: the runtime checks it against
    the manifest entry (:func:`~cover_engine.runtime.engines.identity.engine_name`).
    """
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = parse_onnx(trt, onnx_path, logger)
    if name is not None:
        network.name = name
    blob = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() \
        else None
    config, cache = create_config(trt, builder, network, profiles, precision=precision,
                                  timing_cache=blob, workspace=workspace)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    engine_path.write_bytes(memoryview(serialized))
    if timing_cache_path is not None:
        timing_cache_path.write_bytes(memoryview(cache.serialize()))


def build_engines(trt, out_dir: Path, entries: Sequence[GraphEntry], batch: Mapping[str, int],
                  *, precision: str, timing_cache: Optional[Path] = None,
                  log: Callable[[str], None] = print) -> tuple[list[GraphEntry], TensorRTInfo]:
    """An engine for every graph; the entries with their ``engine`` set, and the build info."""
    out_dir = Path(out_dir).resolve()
    gpu, capability = device_info()
    log(f"TensorRT {trt.__version__} on {gpu} (compute capability {capability}); "
        f"batch {batch['min']}..{batch['max']} (tuned for {batch['opt']})"
        + (f", timing cache {timing_cache}" if timing_cache else ""))
    logger = trt.Logger(trt.Logger.WARNING)
    built = []
    for entry in entries:
        onnx_path = out_dir / entry.file.path
        engine_path = onnx_path.with_suffix(".plan")
        profiles = profile_shapes(entry.inputs, batch)
        build_engine(trt, onnx_path, engine_path, profiles, precision=precision,
                     timing_cache_path=timing_cache, logger=logger,
                     name=engine_name(entry.mode, entry.branch))
        ref = EngineRef(file=FileRef.of(out_dir, engine_path), profiles=profiles)
        log(f"engine {entry.key}: {engine_path.name} ({ref.file.bytes / 2**20:.1f} MB)")
        built.append(replace(entry, engine=ref))
    cache_name = None
    if timing_cache is not None:
        cache_name = timing_cache.name if timing_cache.parent.resolve() == out_dir.resolve() \
            else str(timing_cache)
    return built, TensorRTInfo(version=trt.__version__, gpu=gpu, compute_capability=capability,
                               timing_cache=cache_name)
