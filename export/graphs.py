"""The graphs COVER is exported as, and how one is traced.

Graphs (names are the manifest's; ``B`` is the dynamic batch axis ``"batch"``):

* ``semantic``:  ``view (B,3,T,H,W)`` -> ``score_map (B,1,T,h,w)``, ``sem_feats (B,C,T)``
* ``technical``, ``aesthetic``: ``view``, ``sem_feats`` -> ``score_map (B,1,T',h,w)``

Each is exported twice: ``video`` at the configured view shapes, ``image`` with T=1 (the graph
repeats the frame where the backbone needs two, as upstream does). Shapes are static apart from
the batch, so TensorRT and ONNX Runtime plan everything ahead.

Exporter: ``torch.onnx.export(dynamo=True)``. In torch 2.13 it gives static output shapes and a
few hundred plain ops per graph; the legacy TorchScript exporter (deprecated) left symbolic
output dims and hundreds of Shape/Gather/Constant nodes around every reshape. Its native opset
is 18 (TensorRT 10's parser reads opsets 9 to 20). ConvNeXt's channels-first LayerNorm (written
out as mean/variance ops in the model) is traced as one LayerNormalization op, in both
precisions (:func:`fused_channels_first_norms`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from cover_engine import __version__
from cover_engine.runtime.constants import ATTENTION_HEAD_CHUNK, BRANCHES
from cover_engine.runtime.engines.manifest import BATCH, MODES, TensorSpec
from cover_engine.runtime.errors import EngineError
from .config import ModelConfig
from .convnext3d import LayerNormChannelsFirst
from .cover import COVER

__all__ = ["DEFAULT_OPSET", "EXAMPLE_BATCH", "SemanticGraph", "GatedGraph",
           "fused_channels_first_norms", "GraphPlan", "graph_plans", "graph_module",
           "example_inputs", "trace_graph", "attention_in_head_chunks", "ATTENTION_HEAD_CHUNK"]

#: The dynamo exporter's native opset; TensorRT 10's ONNX parser reads opsets 9..20.
DEFAULT_OPSET = 18
#: Batch of the example inputs: torch.export specialises a dimension of size 1, so use 2.
EXAMPLE_BATCH = 2


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

    A fused LayerNormalization is what :func:`~.onnx_passes.convert_to_fp16` keeps in fp32 (and what TensorRT
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


def graph_module(model: COVER, plan: GraphPlan) -> nn.Module:
    """The module whose forward is ``plan``'s graph."""
    return SemanticGraph(model) if plan.branch == "semantic" else GatedGraph(model, plan.branch)


def example_inputs(plan: GraphPlan, batch: int = EXAMPLE_BATCH, seed: int = 0):
    """Seeded random inputs of ``plan``'s shapes for ``batch`` items."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.with_batch(batch), generator=g) for t in plan.inputs)


@contextlib.contextmanager
def attention_in_head_chunks(model: nn.Module, heads: Optional[int]):
    """While tracing: every CLIP attention layer attends ``heads`` heads at a time (None: all)."""
    from .clip_vit import SelfAttention

    layers = [m for m in model.modules() if isinstance(m, SelfAttention)]
    before = [m.head_chunk for m in layers]
    for m in layers:
        m.head_chunk = heads
    try:
        yield
    finally:
        for m, h in zip(layers, before):
            m.head_chunk = h


def trace_graph(model: COVER, plan: GraphPlan, opset: int = DEFAULT_OPSET,
                head_chunk: Optional[int] = None) -> onnx.ModelProto:
    """The dynamo exporter's fp32 graph for one branch, batch axis dynamic (named "batch");
    ``head_chunk``: see :func:`attention_in_head_chunks`."""
    module = graph_module(model, plan)
    batch = torch.export.Dim(BATCH, min=1)
    names = [t.name for t in plan.inputs]
    quiet = io.StringIO()
    with torch.no_grad(), fused_channels_first_norms(model), \
            attention_in_head_chunks(model, head_chunk), warnings.catch_warnings(), \
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
