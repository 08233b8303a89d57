"""The torch backend's GPU row: fused attention, no host copies inside the model, torch.compile
and CUDA-graph modes. The maths is checked on the CPU; the modes themselves on a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cover_engine.export import swin3d
from cover_engine.export.backend_torch import TORCH_MODES, TorchBackend
from cover_engine.export.config import ModelConfig
from cover_engine.export.cover import COVER
from cover_engine.export.weights import load_model
from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.errors import CoverError


@pytest.fixture(scope="module")
def vector_model(gpu_vectors_dir) -> COVER:
    cfg = ModelConfig.from_json(gpu_vectors_dir / "model" / "config.json")
    return load_model(cfg, gpu_vectors_dir / "model" / "cover.pth",
                      gpu_vectors_dir / "model" / "clip.pt")


@pytest.fixture(scope="module")
def vector_views(gpu_vectors_dir) -> dict[str, np.ndarray]:
    with np.load(gpu_vectors_dir / "model" / "io.npz") as data:
        return {b: data[f"video/input/{b}"] for b in BRANCHES}


def _run(model, views, device="cpu"):
    with torch.inference_mode():
        maps = model(*(torch.from_numpy(np.ascontiguousarray(views[b])).to(device)
                       for b in BRANCHES))
    return {k: v.float().cpu().numpy() for k, v in maps.items()}


def test_fused_window_attention_equals_the_explicit_form(vector_model, vector_views,
                                                         monkeypatch):
    """The Swin's attention through scaled_dot_product_attention (per-window fragment bias and
    shift mask as an additive mask) gives the explicit softmax((q k^T) * s + bias) v."""
    fused = _run(vector_model, vector_views)
    monkeypatch.setattr(swin3d, "fused_attention", lambda: False)
    explicit = _run(vector_model, vector_views)
    for b in BRANCHES:
        np.testing.assert_allclose(fused[b], explicit[b], rtol=0, atol=2e-6, err_msg=b)


def test_window_tables_are_not_copied_to_the_device_per_call(vector_model, vector_views,
                                                             monkeypatch):
    """Fragment gates and shift masks come from numpy; copying them on every forward is a
    pageable host-to-device copy, which stops the host and breaks CUDA graph capture. After
    the first call of a size, none is made."""
    _run(vector_model, vector_views)
    made = []
    frag_gate, shift_mask = swin3d.SwinStage._frag_gate, swin3d.SwinStage._shift_mask
    monkeypatch.setattr(swin3d.SwinStage, "_frag_gate", lambda self, layout, like:
                        made.append(layout) or frag_gate(self, layout, like))
    monkeypatch.setattr(swin3d.SwinStage, "_shift_mask", staticmethod(
        lambda layout, like: made.append(layout) or shift_mask(layout, like)))
    _run(vector_model, vector_views)
    assert made == []
    with torch.inference_mode():  # a size not seen yet: its tables are made (once)
        vector_model.technical_backbone(torch.zeros(1, 3, 4, 64, 64))
    assert made


def test_export_traces_the_explicit_attention(monkeypatch):
    """While exporting, the Swin keeps MatMul / Add / Softmax (the ONNX graph TensorRT parses)
    and caches nothing."""
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert not swin3d.fused_attention()
    assert swin3d._exporting()


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(CoverError, match="CUDA graphs need a CUDA device"):
        TorchBackend(device="cpu", random_weights=True, cuda_graphs=True,
                     config=ModelConfig.official())


def test_torch_modes_name_the_backend(vector_model, gpu_vectors_dir):
    config = gpu_vectors_dir / "model" / "config.json"
    assert TorchBackend.from_mode("eager", model=vector_model, config=config).name == "torch"
    backend = TorchBackend.from_mode("compile", model=vector_model, config=config,
                                     precision="bf16")
    assert backend.name == "torch-bf16-compile" and not backend.cuda_graphs
    with pytest.raises(CoverError, match="unknown torch mode"):
        TorchBackend.from_mode("fast", model=vector_model, config=config)
    assert TORCH_MODES[0] == "eager"


# ------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("precision,atol", [("fp32", 2e-3), ("fp16", 3e-2), ("bf16", 6e-2)])
def test_cuda_scores_match_the_cpu(vector_model, vector_views, gpu_vectors_dir, precision,
                                   atol):
    """fp32 / fp16 / bf16 on the GPU against fp32 on the CPU (the upstream-equivalent scores)."""
    config = gpu_vectors_dir / "model" / "config.json"
    cpu = TorchBackend(model=vector_model, config=config).run(vector_views)
    gpu = TorchBackend(model=vector_model, config=config, device="cuda",
                       precision=precision).run(vector_views)
    vector_model.cpu()
    for b in BRANCHES:
        assert abs(float(gpu[b].mean()) - float(cpu[b].mean())) <= atol, (precision, b)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["cuda-graphs", "compile", "compile+cuda-graphs"])
def test_modes_reproduce_eager(vector_model, vector_views, gpu_vectors_dir, mode):
    """A replayed graph (and the compiled model) gives eager's maps, for two batch sizes and
    fresh inputs each time; the model has no host synchronisation to break the capture."""
    config = gpu_vectors_dir / "model" / "config.json"
    eager = TorchBackend(model=vector_model, config=config, device="cuda", precision="fp16")
    fast = TorchBackend.from_mode(mode, model=vector_model, config=config, device="cuda",
                                  precision="fp16")
    rng = np.random.default_rng(0)
    for batch in (1, 2, 1):
        views = {b: np.concatenate([v] * batch) * rng.uniform(0.8, 1.2) for b, v in
                 vector_views.items()}
        want, got = eager.run(views), fast.run(views)
        for b in BRANCHES:
            np.testing.assert_allclose(got[b], want[b], rtol=0, atol=5e-3, err_msg=(mode, b))
    if "cuda-graphs" in mode:
        assert len(fast._graphs) == 2
    vector_model.cpu()
