"""COVER to an engine folder: every graph exported, folded, checked, optionally in fp16, plus
TensorRT engines and ``manifest.json``.

:func:`export_all` is what ``cover-export`` (and ``cover-run``'s one-time export) calls. The
graphs and their tracing are :mod:`.graphs`; the passes over each ONNX graph (folding, fp16,
TensorRT checks, saving) are :mod:`.onnx_passes`; engines are built by :mod:`.trt_build`.
"""
from __future__ import annotations

import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
import torch

from cover_engine import __version__
from cover_engine.runtime.constants import BRANCHES, CLIP_WEIGHTS, COVER_WEIGHTS, views_for_inputs
from cover_engine.runtime.engines.manifest import (MANIFEST_FILE, MODES, SCORE_RULES, FileRef,
                                                  GraphEntry, Manifest, TensorSpec,
                                                  write_manifest)
from cover_engine.runtime.errors import EngineError, WeightsError
from cover_engine.runtime.gpu.kernels import VIEW_KERNELS, kernel_path
from .config import ModelConfig, resolve_config
from .cover import COVER
from .graphs import (ATTENTION_HEAD_CHUNK, DEFAULT_OPSET, GraphPlan, example_inputs, graph_module,
                     graph_plans, trace_graph)
from .onnx_passes import (EXTERNAL_DATA_THRESHOLD, convert_to_fp16, fold_constants,
                          graph_signature, save_graph, set_graph_identity, trt_parser_problems)
from .weights import weight_identity

__all__ = ["OPSET_RANGE", "CHECK_TOLERANCE", "export_graph", "check_graph", "export_all",
           "tool_versions"]

#: Opsets ``cover-export`` accepts (TensorRT 10's ONNX parser reads up to 20).
OPSET_RANGE = (17, 20)
#: Largest graph output difference from PyTorch fp32 accepted by the export check, by precision.
#: fp16: the reference-vector model's graphs differ by at most 7.3e-4 on ONNX Runtime CPU; the
#: limit leaves room for deeper official-size models while still catching a broken conversion.
CHECK_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}

Log = Callable[[str], None]


def export_graph(model: COVER, plan: GraphPlan, out_dir: Path, *, precision: str = "fp32",
                 opset: int = DEFAULT_OPSET,
                 external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> GraphEntry:
    """Trace, fold, convert, check and save one graph; its manifest entry (no engine yet).

    fp32 graphs (the CPU path) attend in head chunks (``graphs.ATTENTION_HEAD_CHUNK``); fp16
    graphs, built into TensorRT engines, keep whole attention for TensorRT's fused kernels."""
    proto = trace_graph(model, plan, opset,
                        head_chunk=ATTENTION_HEAD_CHUNK if precision == "fp32" else None)
    fold_constants(proto)
    if precision == "fp16":
        convert_to_fp16(proto)
    set_graph_identity(proto, plan.mode, plan.branch)
    problems = trt_parser_problems(proto)
    if problems:
        raise EngineError(f"the {plan.key} graph would not parse in TensorRT: "
                          + "; ".join(problems[:5]))
    path = out_dir / f"{plan.stem}.onnx"
    data = save_graph(proto, path, external_threshold)
    sources = {t.name: t.source for t in plan.inputs}
    inputs, outputs = graph_signature(onnx.load(str(path), load_external_data=False))
    return GraphEntry(
        mode=plan.mode, branch=plan.branch, file=FileRef.of(out_dir, path),
        external_data=FileRef.of(out_dir, data) if data else None,
        inputs=tuple(TensorSpec(t.name, t.shape, t.dtype, sources[t.name]) for t in inputs),
        outputs=outputs)


def check_graph(model: COVER, plan: GraphPlan, entry: GraphEntry, out_dir: Path,
                *, batch: int = 1, seed: int = 1) -> float:
    """Largest absolute difference between the graph in ONNX Runtime and PyTorch fp32."""
    import onnxruntime as ort

    inputs = example_inputs(plan, batch, seed)
    if plan.branch != "semantic":  # real (unit-norm) semantic features, not noise
        _, c, _, h, w = model.config.inputs["semantic"]
        sem_view = torch.randn(batch, c, plan.inputs[1].shape[2], h, w,
                               generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            inputs = (inputs[0], model.forward_semantic(sem_view)[1])
    with torch.no_grad():
        ref = graph_module(model, plan)(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out_dir / entry.file.path), options,
                                   providers=["CPUExecutionProvider"])
    feed = {t.name: x.numpy().astype(t.dtype) for t, x in zip(entry.inputs, inputs)}
    got = session.run([t.name for t in entry.outputs], feed)
    return max(float(np.abs(g.astype(np.float64) - r.double().numpy()).max())
               for g, r in zip(got, ref))


def export_all(out_dir: Union[str, Path], *, weights=None, clip_weights=None, config=None,
               precision: str = "fp32", random_weights: bool = False, seed: int = 0,
               name: Optional[str] = None, opset: int = DEFAULT_OPSET, batch_max: int = 8,
               batch_opt: int = 1, modes: Sequence[str] = MODES, engines: Optional[bool] = None,
               timing_cache: Union[None, str, Path] = None, check: bool = False,
               external_threshold: int = EXTERNAL_DATA_THRESHOLD, model: Optional[COVER] = None,
               calibration: Optional[Mapping] = None, head: Union[None, str, Path] = None,
               log: Log = print) -> Manifest:
    """Export the whole engine folder: graphs, optional TensorRT engines, ``manifest.json``.

    ``engines``: None builds TensorRT engines for fp16 when tensorrt is importable (and says so
    when it is not); True requires them; False skips them. ``check`` runs every graph in ONNX
    Runtime against PyTorch on random views (``cover-export`` does by default; at official sizes
    on a CPU it costs minutes, so the automatic export of ``cover-run`` skips it). ``model`` skips
    weight loading (its weights are then recorded as given by ``weights``/``clip_weights``).
    ``calibration`` (a calibration file's content) goes into the manifest, after checking that it
    was fitted for these weights and views (refused before any graph is exported otherwise).
    ``head``: a ``cover-train`` head file, checked against these weights and config, put into
    the graphs and named (with its sha256) in the manifest.
    """
    if precision not in ("fp32", "fp16"):
        raise EngineError(f"unknown precision {precision!r} (choose fp32 or fp16)")
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise EngineError(f"opset {opset} not supported "
                          f"(choose {OPSET_RANGE[0]}..{OPSET_RANGE[1]})")
    if not 1 <= batch_opt <= batch_max:
        raise EngineError(f"need 1 <= batch_opt ({batch_opt}) <= batch_max ({batch_max})")
    trt = None
    want_engines = precision == "fp16" if engines is None else engines
    if want_engines:
        from . import trt_build

        trt = trt_build.import_tensorrt(required=False)
        if trt is None and engines:
            raise EngineError("TensorRT engines asked for, but the tensorrt package is not "
                              "installed (pip install 'cover-engine[gpu-cu12]' or '[gpu-cu13]')")
    out_dir = Path(out_dir).resolve()
    cfg = resolve_config(config)
    official = cfg == ModelConfig.official()
    steps = len(modes) * len(BRANCHES) + 2
    started = time.perf_counter()

    log(f"[1/{steps}] model: {'official' if official else 'custom'} config, "
        f"{'random weights (seed %d)' % seed if random_weights else 'loading weights'}")
    t0 = time.perf_counter()
    if model is None:
        model, weight_info = _load(cfg, official, weights, clip_weights, random_weights, seed)
    else:
        weight_info = {"random_seed": seed} if random_weights else weight_identity(
            cfg, weights, clip_weights)
    head_entry = None
    if head is not None:
        from .train.headfile import load_head, manifest_entry

        head_entry = manifest_entry(load_head(model, head, cfg, weight_info, log=log))
        log(f"      head {head_entry['file']} (sha256 {head_entry['sha256'][:12]}…) applied")
    model = model.float().eval()
    log(f"      ready in {time.perf_counter() - t0:.1f} s")
    if calibration is not None:
        calibration = _checked_calibration(calibration, weight_info, views_for_inputs(cfg.inputs))
    # only now, with the model and head accepted, is the folder touched
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # no stale manifest over new files

    entries: list[GraphEntry] = []
    plans = graph_plans(cfg, modes)
    for k, plan in enumerate(plans, start=2):
        t0 = time.perf_counter()
        entry = export_graph(model, plan, out_dir, precision=precision, opset=opset,
                             external_threshold=external_threshold)
        size = sum(f.bytes for f in entry.files())
        msg = (f"[{k}/{steps}] {plan.key}: {entry.file.path} ({_human(size)}"
               f"{', external data' if entry.external_data else ''}) in "
               f"{time.perf_counter() - t0:.1f} s")
        if check:
            diff = check_graph(model, plan, entry, out_dir)
            msg += f"; ONNX Runtime vs PyTorch max |diff| {diff:.2e}"
            if not diff <= CHECK_TOLERANCE[precision]:
                raise EngineError(f"{out_dir / entry.file.path}: ONNX Runtime output differs "
                                  f"from PyTorch by {diff:.3g} (> {CHECK_TOLERANCE[precision]:g} "
                                  f"for {precision}); the export is not faithful")
        log(msg)
        entries.append(entry)

    batch = {"min": 1, "opt": batch_opt, "max": batch_max}
    trt_info = None
    step = f"[{steps}/{steps}]"
    if want_engines:
        if trt is None:
            log(f"{step} TensorRT: the tensorrt package is not installed; stopping after ONNX "
                "(install 'cover-engine[gpu-cu12]' or '[gpu-cu13]' on the GPU host and re-run "
                "to build engines)")
        else:
            entries, trt_info = trt_build.build_engines(
                trt, out_dir, entries, batch, precision=precision,
                timing_cache=Path(timing_cache) if timing_cache else out_dir / "timing.cache",
                log=lambda m: log(f"{step} {m}"))
    else:
        why = "--no-engine" if engines is False else precision
        log(f"{step} TensorRT engines: not built ({why})")

    kernels = out_dir / VIEW_KERNELS  # for a C++ host: the view kernels, as they are
    shutil.copyfile(kernel_path(VIEW_KERNELS), kernels)
    manifest = Manifest(
        name=name or out_dir.name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        precision=precision, opset=opset, batch=batch, model=cfg.to_dict(),
        views=views_for_inputs(cfg.inputs), weights=weight_info, head=head_entry,
        tools=tool_versions(trt_info),
        graphs=tuple(entries), tensorrt=trt_info, scores=dict(SCORE_RULES),
        kernels=FileRef.of(out_dir, kernels.name), calibration=calibration)
    path = write_manifest(out_dir, manifest)
    log(f"wrote {path} ({len(entries)} graphs, {precision}) in "
        f"{time.perf_counter() - started:.1f} s")
    return manifest


def _checked_calibration(calibration: Mapping, weight_info: dict, views) -> dict:
    """``calibration`` as a plain dict, refused (CalibrationError) unless it was fitted for
    these weights and views."""
    from cover_engine.runtime.eval.calibration import Calibration
    from cover_engine.runtime.model_identity import ModelIdentity

    cal = Calibration.from_dict(calibration)
    cal.check(ModelIdentity.of(weight_info, views), source="--calibration")
    return cal.to_dict()


def tool_versions(trt_info=None) -> dict[str, Optional[str]]:
    """Versions of the software that made the export (null where not installed)."""
    import onnxruntime

    try:
        import onnxscript

        onnxscript_version: Optional[str] = onnxscript.__version__
    except ImportError:
        onnxscript_version = None
    return {"cover_engine": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript_version,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "tensorrt": trt_info.version if trt_info else None}


def _load(cfg, official, weights, clip_weights, random_weights, seed):
    from .backend_torch import build_model

    model, _ = build_model(cfg, weights=weights, clip_weights=clip_weights,
                           random_weights=random_weights, seed=seed)
    if random_weights:
        return model, {"random_seed": seed}
    return model, weight_identity(cfg, *model.weight_files)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
