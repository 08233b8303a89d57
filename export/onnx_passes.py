"""Passes over an exported ONNX graph: constant folding, fp16 conversion, TensorRT checks, saving.

Why these choices:

* Constant folding (:func:`fold_constants`): every tensor that does not depend on the inputs
  (the gathered relative/fragment position-bias tables, window geometry) is computed once with
  ONNX Runtime and stored, unless the result is larger than ``FOLD_MAX_ELEMENTS`` and larger
  than what it is computed from: at official sizes the per-window position biases (``(nW, nH,
  N, N)`` per Swin block, from fragment gates and shift masks) would add about 1.6 GB of
  constants, so they stay as a few cheap ops on small tables (the technical graph is ~290 MB).
* fp16 (:func:`convert_to_fp16`): the fp32 graph is converted, weights and activations to
  float16, except LayerNormalization, Softmax and the reductions (ReduceMean/Sum/L2), which run
  in float32 between casts with float32 parameters: CLIP's residual stream makes variances
  overflow fp16, and softmax sums need the range. Score maps stay float32 outputs; view inputs
  and ``sem_feats`` are float16. Measured against PyTorch fp32 on ONNX Runtime CPU: score maps
  within 7.3e-4 (reference-vector model) and 3.1e-4 (official-size Swin/ConvNeXt, random
  weights); fp32 graphs within 1.2e-6.
* Only standard ONNX ops that TensorRT's parser supports (:func:`trt_parser_problems`) pass.
* Graphs whose weights would pass protobuf's 2 GiB limit are saved with external data
  (:func:`save_graph`).

Pure ONNX (and ONNX Runtime for folding): no torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cover_engine.runtime.engines.identity import graph_metadata
from cover_engine.runtime.engines.manifest import BATCH, TensorSpec
from cover_engine.runtime.errors import EngineError

__all__ = ["FOLD_MAX_ELEMENTS", "KEEP_FP32_OPS", "EXTERNAL_DATA_THRESHOLD", "TRT_UNSUPPORTED_OPS",
           "TRT_CONSTANT_INPUTS", "TRT_OPSETS", "fold_constants", "convert_to_fp16",
           "trt_parser_problems", "op_types", "set_graph_identity", "save_graph",
           "graph_signature"]

#: Protobuf cannot serialise a message over 2 GiB: above this, weights go to an external file.
EXTERNAL_DATA_THRESHOLD = 2 ** 31 - 2 ** 26
#: Input-independent results up to this many elements are stored as constants (see docstring).
FOLD_MAX_ELEMENTS = 1 << 22
#: Ops computed in float32 inside fp16 graphs.
KEEP_FP32_OPS = frozenset({"LayerNormalization", "Softmax", "ReduceMean", "ReduceSum",
                           "ReduceSumSquare", "ReduceL2"})
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


def graph_signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs as manifest tensors (dynamic axes named ``"batch"``)."""
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
