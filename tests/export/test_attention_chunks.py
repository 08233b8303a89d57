"""fp32 graphs attend CLIP heads in chunks (ONNX Runtime's CPU memory); fp16 graphs do not.

The reference-vector model has one head, so this uses its config with eight: the chunked graph
must give PyTorch's numbers and hold one Softmax per chunk of heads."""
from __future__ import annotations

from dataclasses import replace

import onnx
import pytest
import torch

from cover_engine.export import graphs, onnx_export
from cover_engine.export.clip_vit import SelfAttention
from cover_engine.export.config import ModelConfig
from cover_engine.export.cover import COVER

pytestmark = pytest.mark.vectors


def test_head_chunks_change_nothing_in_torch():
    torch.manual_seed(0)
    attn = SelfAttention(64, 8).eval()
    x = torch.randn(3, 50, 64)
    with torch.no_grad():
        whole = attn(x)
        for chunk in (1, 3, 4):
            attn.head_chunk = chunk
            assert torch.equal(attn(x), whole)


@pytest.fixture(scope="module")
def eight_heads(vectors_dir):
    cfg = ModelConfig.from_json(vectors_dir / "model" / "config.json")
    cfg = replace(cfg, semantic=replace(cfg.semantic, heads=8))
    torch.manual_seed(0)
    model = COVER(cfg).eval()
    plan = next(p for p in graphs.graph_plans(cfg, ("video",)) if p.branch == "semantic")
    return model, plan, cfg.semantic


def _softmaxes(path) -> int:
    return sum(n.op_type == "Softmax" for n in onnx.load(str(path)).graph.node)


def test_fp32_graph_attends_in_chunks_and_matches_torch(eight_heads, tmp_path):
    model, plan, sem = eight_heads
    entry = onnx_export.export_graph(model, plan, tmp_path, precision="fp32")
    chunks = -(-sem.heads // graphs.ATTENTION_HEAD_CHUNK)
    assert _softmaxes(tmp_path / entry.file.path) == sem.layers * chunks
    assert onnx_export.check_graph(model, plan, entry, tmp_path) <= onnx_export.CHECK_TOLERANCE["fp32"]
    assert all(m.head_chunk is None for m in model.modules() if isinstance(m, SelfAttention))

    (tmp_path / "fp16").mkdir()
    fp16 = onnx_export.export_graph(model, plan, tmp_path / "fp16", precision="fp16")
    assert _softmaxes(tmp_path / "fp16" / fp16.file.path) == sem.layers   # whole, for TensorRT
