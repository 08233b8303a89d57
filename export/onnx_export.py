"""COVER to ONNX: one graph per branch and mode, folded, checked, optionally in fp16.

Graphs (names are the manifest's; ``B`` is the dynamic batch axis ``"batch"``):

* ``semantic``:  ``view (B,3,T,H,W)`` -> ``score_map (B,1,T,h,w)``, ``sem_feats (B,C,T)``
* ``technical``, ``aesthetic``: ``view``, ``sem_feats`` -> ``score_map (B,1,T',h,w)``

Each is exported twice: ``video`` at the configured view shapes, ``image`` with T=1 (the graph
repeats the frame where the backbone needs two, as upstream does). Shapes are static apart from
the batch, so TensorRT and ONNX Runtime plan everything ahead.

Why the choices below:

* Exporter: ``torch.onnx.export(dynamo=True)``. In torch 2.13 it gives static output shapes and
  a few hundred plain ops per graph; the legacy TorchScript exporter (deprecated) left symbolic
  output dims and hundreds of Shape/Gather/Constant nodes around every reshape. Its native opset
  is 18 (TensorRT 10's parser reads opsets 9 to 20).
* Constant folding (:func:`fold_constants`): every tensor that does not depend on the inputs
  (the gathered relative/fragment position-bias tables, window geometry) is computed once with
  ONNX Runtime and stored, unless the result is larger than ``FOLD_MAX_ELEMENTS`` and larger
  than what it is computed from: at official sizes the per-window position biases (``(nW, nH,
  N, N)`` per Swin block, from fragment gates and shift masks) would add about 1.6 GB of
  constants, so they stay as a few cheap ops on small tables (the technical graph is ~290 MB).
* fp16 (:func:`convert_to_fp16`): the fp32 graph is converted, weights and activations to
  float16, except LayerNormalization, Softmax and the reductions (ReduceMean/Sum/L2), which run
  in float32 between casts with float32 parameters: CLIP's residual stream makes variances
  overflow fp16, and softmax sums need the range. ConvNeXt's channels-first LayerNorm (written
  out as mean/variance ops in the model) is exported as one LayerNormalization op, in both
  precisions, see :func:`fused_channels_first_norms`. Score maps stay float32 outputs; view
  inputs and ``sem_feats`` are float16. Measured against PyTorch fp32 on ONNX Runtime CPU: score
  maps within 7.3e-4 (reference-vector model) and 3.1e-4 (official-size Swin/ConvNeXt, random
  weights); fp32 graphs within 1.2e-6.
* Only standard ONNX ops that TensorRT's parser supports (:func:`trt_parser_problems`) pass.
"""
from __future__ import annotations

import contextlib
import io
import logging
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from .. import __version__
from cover_engine.runtime.constants import BRANCHES, CLIP_WEIGHTS, COVER_WEIGHTS, views_for_inputs
from cover_engine.runtime.errors import EngineError, WeightsError
from cover_engine.runtime.engines.identity import graph_metadata
from cover_engine.runtime.gpu.kernels import VIEW_KERNELS, kernel_path
from cover_engine.runtime.engines.manifest import (BATCH, MODES, SCORE_RULES, FileRef, GraphEntry, Manifest,
                                TensorSpec, write_manifest, MANIFEST_FILE)
from .config import ModelConfig
from .convnext3d import LayerNormChannelsFirst
from .cover import COVER

#: The dynamo exporter's native opset; TensorRT 10's ONNX parser reads opsets 9..20.
DEFAULT_OPSET = 18
OPSET_RANGE = (17, 20)
#: Batch of the example inputs: torch.export specialises a dimension of size 1, so use 2.
EXAMPLE_BATCH = 2
#: Protobuf cannot serialise a message over 2 GiB: above this, weights go to an external file.
EXTERNAL_DATA_THRESHOLD = 2 ** 31 - 2 ** 26
#: Input-independent results up to this many elements are stored as constants (see docstring).
FOLD_MAX_ELEMENTS = 1 << 22
#: Ops computed in float32 inside fp16 graphs.
KEEP_FP32_OPS = frozenset({"LayerNormalization", "Softmax", "ReduceMean", "ReduceSum",
                           "ReduceSumSquare", "ReduceL2"})
#: Largest graph output difference from PyTorch fp32 accepted by the export check, by precision.
#: fp16: the reference-vector model's graphs differ by at most 7.3e-4 on ONNX Runtime CPU; the
#: limit leaves room for deeper official-size models while still catching a broken conversion.
CHECK_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}

#: TensorRT 10 ONNX parser: operators it does not implement (onnx-tensorrt docs/operators.md).
TRT_UNSUPPORTED_OPS = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "BlackmanWindow", "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger",
    "DFT", "Det", "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "ImageDecoder",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement",
    "QLinearConv", "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique",
})
#: Ops whose ``axes``-like input the parser needs as an initializer: op -> input index.
TRT_CONSTANT_INPUTS = {"Squeeze": 1, "Unsqueeze": 1, "Slice": 3, "Pad": 3, "ReduceMean": 1,
                       "ReduceSum": 1, "ReduceL2": 1, "ReduceMax": 1, "ReduceMin": 1,
                       "ReduceProd": 1, "ReduceSumSquare": 1}
TRT_OPSETS = (9, 20)
_UNKNOWN_SIZE = 1 << 62

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- graph modules

class SemanticGraph(nn.Module):
    """``view -> (score_map, sem_feats)``."""

    input_names = ("view",)
    output_names = ("score_map", "sem_feats")

    def __init__(self, model: COVER):
        super().__init__()
        self.model = model

    def forward(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_semantic(view)


class GatedGraph(nn.Module):
    """``(view, sem_feats) -> score_map`` of the technical or aesthetic branch."""

    input_names = ("view", "sem_feats")
    output_names = ("score_map",)

    def __init__(self, model: COVER, branch: str):
        super().__init__()
        self.model = model
        self.forward_branch = getattr(model, f"forward_{branch}")

    def forward(self, view: torch.Tensor, sem_feats: torch.Tensor) -> torch.Tensor:
        return self.forward_branch(view, sem_feats)


class _ChannelsFirstLayerNorm(nn.Module):
    """Same function as :class:`LayerNormChannelsFirst`, as one LayerNormalization op."""

    def __init__(self, norm: LayerNormChannelsFirst):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


@contextlib.contextmanager
def fused_channels_first_norms(model: nn.Module):
    """Temporarily swap ConvNeXt's written-out channels-first LayerNorms for single ops.

    A fused LayerNormalization is what :func:`convert_to_fp16` keeps in fp32 (and what TensorRT
    runs as one normalisation layer); the written-out form would square fp16 deviations.
    """
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, LayerNormChannelsFirst):
                swapped.append((parent, name, child))
    for parent, name, child in swapped:
        setattr(parent, name, _ChannelsFirstLayerNorm(child))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


# ----------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class GraphPlan:
    """What one exported graph takes: its mode, branch, file name and input shapes."""

    mode: str
    branch: str
    inputs: tuple[TensorSpec, ...]

    @property
    def stem(self) -> str:
        return self.branch if self.mode == "video" else f"{self.branch}-image"

    @property
    def key(self) -> str:
        return f"{self.mode}/{self.branch}"

    @property
    def output_names(self) -> tuple[str, ...]:
        return SemanticGraph.output_names if self.branch == "semantic" else GatedGraph.output_names


def graph_plans(cfg: ModelConfig, modes: Sequence[str] = MODES) -> list[GraphPlan]:
    """Input shapes of every graph, from the configured view shapes (fp32 names and shapes)."""
    plans = []
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        frames = {b: cfg.inputs[b][2] if mode == "video" else 1 for b in BRANCHES}
        feats = TensorSpec("sem_feats", (BATCH, cfg.semantic.output_dim, frames["semantic"]),
                           "float32", "semantic:sem_feats")
        for b in BRANCHES:
            _, c, _, h, w = cfg.inputs[b]
            view = TensorSpec("view", (BATCH, c, frames[b], h, w), "float32", "view")
            plans.append(GraphPlan(mode, b, (view,) if b == "semantic" else (view, feats)))
    return plans


def _graph_module(model: COVER, plan: GraphPlan) -> nn.Module:
    return SemanticGraph(model) if plan.branch == "semantic" else GatedGraph(model, plan.branch)


def example_inputs(plan: GraphPlan, batch: int = EXAMPLE_BATCH, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.with_batch(batch), generator=g) for t in plan.inputs)


# ----------------------------------------------------------------------------- export

def trace_graph(model: COVER, plan: GraphPlan, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The dynamo exporter's fp32 graph for one branch, batch axis dynamic (named "batch")."""
    module = _graph_module(model, plan)
    batch = torch.export.Dim(BATCH, min=1)
    names = [t.name for t in plan.inputs]
    quiet = io.StringIO()
    with torch.no_grad(), fused_channels_first_norms(model), warnings.catch_warnings(), \
            contextlib.redirect_stdout(quiet), _quiet_loggers("torch.onnx", "onnxscript", "torch"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module.eval(), example_inputs(plan), None, dynamo=True, verbose=False,
                opset_version=opset, input_names=names, output_names=list(plan.output_names),
                dynamic_shapes={n: {0: batch} for n in names}, optimize=True)
        except Exception as exc:
            raise EngineError(f"ONNX export of the {plan.key} graph failed: "
                              f"{' '.join(str(exc).split())[:400]}") from exc
        proto = program.model_proto
    proto.producer_name, proto.producer_version = "cover-engine", __version__
    return proto


def fold_constants(model: onnx.ModelProto, max_elements: int = FOLD_MAX_ELEMENTS) -> int:
    """Replace input-independent nodes by initializers, in place; returns how many were folded.

    A node is folded when all its inputs are constants and its outputs hold at most
    ``max(max_elements, elements of its constant inputs)`` elements, so tables are folded but
    small tables are not broadcast into huge constants. Values are computed by ONNX Runtime.
    """
    import onnxruntime as ort

    graph = model.graph
    sizes = _static_sizes(model)
    const = {t.name for t in graph.initializer}
    const |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    nodes = list(graph.node)
    folded_at: set[int] = set()
    for k, node in enumerate(nodes):
        if node.op_type == "Constant" or not node.input or node.op_type.startswith("Random"):
            continue
        inputs = [i for i in node.input if i]
        if not all(i in const for i in inputs):
            continue
        out_size = sum(sizes.get(o, _UNKNOWN_SIZE) for o in node.output)
        if out_size > max(max_elements, sum(sizes.get(i, 0) for i in inputs)):
            continue
        folded_at.add(k)
        const.update(node.output)
    if not folded_at:
        return 0
    folded = [n for k, n in enumerate(nodes) if k in folded_at]
    kept = [n for k, n in enumerate(nodes) if k not in folded_at]
    used_later = {i for n in kept for i in n.input}
    used_later |= {o.name for o in graph.output}
    frontier = [o for n in folded for o in n.output if o in used_later]
    needed = {i for n in folded for i in n.input if i}
    sub = helper.make_model(
        helper.make_graph(
            [n for n in graph.node if n.op_type == "Constant" and set(n.output) & needed] + folded,
            "fold", [], [helper.make_empty_tensor_value_info(o) for o in frontier],
            [t for t in graph.initializer if t.name in needed]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    values = ort.InferenceSession(sub.SerializeToString(), options,
                                  providers=["CPUExecutionProvider"]).run(frontier, {})
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), o)
                             for o, v in zip(frontier, values))
    _prune(model)
    return len(folded)


def convert_to_fp16(model: onnx.ModelProto, *, fp32_outputs: Iterable[str] = ("score_map",),
                    keep_fp32_ops: frozenset = KEEP_FP32_OPS) -> None:
    """Turn an fp32 graph into fp16, in place; ``keep_fp32_ops`` run in fp32 between casts.

    Graph inputs become float16; outputs named in ``fp32_outputs`` are cast back to float32.
    Initializers used only by fp32 ops stay float32 (LayerNorm scale and bias).
    """
    graph = model.graph
    inferred = _infer_shapes(model)  # element types of intermediates
    dtypes = {v.name: v.type.tensor_type.elem_type
              for v in list(inferred.graph.value_info) + list(graph.input) + list(graph.output)}
    dtypes.update({t.name: t.data_type for t in graph.initializer})
    is_float = lambda name: dtypes.get(name) == TensorProto.FLOAT  # noqa: E731
    nodes = list(graph.node)
    keep_at = {k for k, n in enumerate(nodes) if n.op_type in keep_fp32_ops}
    consumers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            consumers.setdefault(i, []).append(k)

    fp32_inits = set()
    for t in list(graph.initializer):
        if t.data_type != TensorProto.FLOAT:
            continue
        users = consumers.get(t.name, [])
        if users and all(u in keep_at for u in users):
            fp32_inits.add(t.name)
            continue
        half = numpy_helper.from_array(_to_half(numpy_helper.to_array(t)), t.name)
        if any(u in keep_at for u in users):  # shared: fp32 original for the fp32 ops
            fp32_inits.add(t.name)
            half.name = f"{t.name}__fp16"
            for u in users:
                if u not in keep_at:
                    nodes[u].input[:] = [half.name if i == t.name else i for i in nodes[u].input]
            graph.initializer.append(half)
        else:
            t.CopyFrom(half)

    new_nodes: list[onnx.NodeProto] = []
    for k, n in enumerate(nodes):
        if k in keep_at:
            for k, name in enumerate(n.input):
                if name and is_float(name) and name not in fp32_inits:
                    cast = f"{name}__to_fp32_{n.name or n.output[0]}"
                    new_nodes.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT))
                    n.input[k] = cast
            new_nodes.append(n)
            for k, name in enumerate(n.output):
                if is_float(name):
                    n.output[k] = f"{name}__fp32"
                    new_nodes.append(helper.make_node("Cast", [n.output[k]], [name],
                                                      to=TensorProto.FLOAT16))
            continue
        if n.op_type == "Cast" and _attr(n, "to") == TensorProto.FLOAT:
            _set_attr(n, "to", TensorProto.FLOAT16)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                half = _to_half(numpy_helper.to_array(a.t))
                a.t.CopyFrom(numpy_helper.from_array(half, a.t.name))
        new_nodes.append(n)

    for inp in graph.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inp.type.tensor_type.elem_type = TensorProto.FLOAT16
    keep_out = set(fp32_outputs)
    for out in graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        if out.name in keep_out:
            inner = f"{out.name}__fp16"
            for n in new_nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT))
        else:
            out.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]


def trt_parser_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT 10's ONNX parser would reject this graph (empty when it should parse)."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not TRT_OPSETS[0] <= opset <= TRT_OPSETS[1]:
        problems.append(f"opset {opset} outside TensorRT's {TRT_OPSETS[0]}..{TRT_OPSETS[1]}")
    const = {t.name for t in model.graph.initializer}
    const |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.name or n.op_type}: custom op {n.domain}::{n.op_type}")
        elif n.op_type in TRT_UNSUPPORTED_OPS:
            problems.append(f"{n.name or n.op_type}: {n.op_type} is not supported by TensorRT")
        k = TRT_CONSTANT_INPUTS.get(n.op_type)
        if k is not None and len(n.input) > k and n.input[k] and n.input[k] not in const:
            problems.append(f"{n.name or n.op_type}: {n.op_type} input {k} must be a constant")
    return problems


def op_types(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph has."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def set_graph_identity(model: onnx.ModelProto, mode: str, branch: str) -> None:
    """Write mode and branch into the graph's ``metadata_props`` (other entries kept): the
    runtime refuses a graph whose manifest entry says otherwise (see runtime.engines.identity)."""
    props = graph_metadata(mode, branch)
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def save_graph(model: onnx.ModelProto, path: Path,
               external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Optional[Path]:
    """Write the graph; weights go to ``<file>.data`` when the graph would exceed the threshold.

    Returns the external data file, or None. The result passes ``onnx.checker`` (full check).
    """
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    external = _initializer_bytes(model) > external_threshold
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"{path}: onnx.checker rejects the exported graph: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    return data if external else None


def export_graph(model: COVER, plan: GraphPlan, out_dir: Path, *, precision: str = "fp32",
                 opset: int = DEFAULT_OPSET,
                 external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> GraphEntry:
    """Trace, fold, convert, check and save one graph; its manifest entry (no engine yet)."""
    proto = trace_graph(model, plan, opset)
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
    inputs, outputs = _signature(onnx.load(str(path), load_external_data=False))
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
        ref = _graph_module(model, plan)(*inputs)
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
               log: Log = print) -> Manifest:
    """Export the whole engine folder: graphs, optional TensorRT engines, ``manifest.json``.

    ``engines``: None builds TensorRT engines for fp16 when tensorrt is importable (and says so
    when it is not); True requires them; False skips them. ``check`` runs every graph in ONNX
    Runtime against PyTorch on random views (``cover-export`` does by default; at official sizes
    on a CPU it costs minutes, so the automatic export of ``cover-run`` skips it). ``model`` skips
    weight loading (its weights are then recorded as given by ``weights``/``clip_weights``).
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

        trt = trt_build.import_tensorrt()
        if trt is None and engines:
            raise EngineError("TensorRT engines asked for, but the tensorrt package is not "
                              "installed (pip install 'cover-engine[trt]')")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # no stale manifest over new files
    cfg = config if isinstance(config, ModelConfig) else (
        ModelConfig.official() if config is None else ModelConfig.from_json(config))
    official = cfg == ModelConfig.official()
    steps = len(modes) * len(BRANCHES) + 2
    started = time.perf_counter()

    log(f"[1/{steps}] model: {'official' if official else 'custom'} config, "
        f"{'random weights (seed %d)' % seed if random_weights else 'loading weights'}")
    t0 = time.perf_counter()
    if model is None:
        model, weight_info = _load(cfg, official, weights, clip_weights, random_weights, seed)
    else:
        weight_info = {"random_seed": seed} if random_weights else _weight_info(
            official, weights, clip_weights)
    model = model.float().eval()
    log(f"      ready in {time.perf_counter() - t0:.1f} s")

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
                "(install 'cover-engine[trt]' on the GPU host and re-run to build engines)")
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
        views=views_for_inputs(cfg.inputs), weights=weight_info, tools=tool_versions(trt_info),
        graphs=tuple(entries), tensorrt=trt_info, scores=dict(SCORE_RULES),
        kernels=FileRef.of(out_dir, kernels.name))
    path = write_manifest(out_dir, manifest)
    log(f"wrote {path} ({len(entries)} graphs, {precision}) in "
        f"{time.perf_counter() - started:.1f} s")
    return manifest


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


# ----------------------------------------------------------------------------- helpers

def _load(cfg, official, weights, clip_weights, random_weights, seed):
    from .backend_torch import build_model

    model, _ = build_model(cfg, weights=weights, clip_weights=clip_weights,
                           random_weights=random_weights, seed=seed)
    if random_weights:
        return model, {"random_seed": seed}
    return model, _weight_info(official, model.weight_files[0], model.weight_files[1])


def _weight_info(official, cover_path, clip_path) -> dict:
    from cover_engine.runtime.hashing import sha256_file

    info = {}
    for key, wf, path in (("cover", COVER_WEIGHTS, cover_path), ("clip", CLIP_WEIGHTS, clip_path)):
        if path is None and not official:
            raise WeightsError(f"the weights of a custom model must be named ({wf.name})")
        info[key] = {"file": Path(path).name if path else wf.name,
                     "sha256": wf.sha256 if official else sha256_file(path)}
    return info


def _signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], tuple[TensorSpec, ...]]:
    def spec(v) -> TensorSpec:
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else BATCH for d in tt.shape.dim)
        return TensorSpec(v.name, dims, helper.tensor_dtype_to_np_dtype(tt.elem_type).name)

    return [spec(v) for v in model.graph.input], tuple(spec(v) for v in model.graph.output)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on a light copy: weights over 1 MiB are declared as graph inputs rather
    than carried, so the copy stays far below protobuf's 2 GiB limit whatever the model size."""
    big = [t for t in model.graph.initializer if _tensor_bytes(t) > 1 << 20]
    names = {t.name for t in big}
    light = helper.make_model(
        helper.make_graph(
            model.graph.node, model.graph.name,
            list(model.graph.input) + [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                       for t in big],
            model.graph.output, [t for t in model.graph.initializer if t.name not in names]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    return onnx.shape_inference.infer_shapes(light)


def _static_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Element count of every tensor with a fully static shape (shape inference)."""
    inferred = _infer_shapes(model)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            sizes[v.name] = int(np.prod([d.dim_value for d in dims]))
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    sizes[n.output[0]] = int(np.prod(a.t.dims))
    return sizes


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers nothing reads any more."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for n in reversed(graph.node):
        if set(n.output) & needed:
            kept.append(n)
            needed.update(i for i in n.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    values = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(values)


def _to_half(array: np.ndarray) -> np.ndarray:
    """float32 -> float16, clamped to fp16's finite range (no accidental infinities)."""
    limit = np.finfo(np.float16).max
    return np.clip(array, -limit, limit).astype(np.float16)


def _attr(node: onnx.NodeProto, name: str):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in node.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(_tensor_bytes(t) for t in model.graph.initializer)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
