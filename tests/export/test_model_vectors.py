"""The PyTorch COVER model: upstream's reference vectors, batching, and other configurations."""
from __future__ import annotations

import json
import random
from math import ceil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cover_engine.export import convnext3d, swin3d
from cover_engine.export.config import ClipVitConfig, ConvNeXtConfig, ModelConfig, SwinConfig
from cover_engine.export.cover import COVER, CrossGatingBlock
from cover_engine.export.weights import load_model
from cover_engine.runtime.results import branch_scores
from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.errors import InputError

ATOL = 1e-4  # cover-vectors/README.md: every score map within 1e-4 absolute in float32 on CPU


def run(model: COVER, views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        maps = model(*(torch.from_numpy(np.ascontiguousarray(views[b])) for b in BRANCHES))
    return {k: v.numpy() for k, v in maps.items()}


# ----------------------------------------------------------------------------- reference vectors

@pytest.fixture(scope="module")
def vector_model(vectors_dir) -> COVER:
    cfg = ModelConfig.from_json(vectors_dir / "model" / "config.json")
    return load_model(cfg, vectors_dir / "model" / "cover.pth", vectors_dir / "model" / "clip.pt")


@pytest.fixture(scope="module")
def io(vectors_dir) -> dict[str, np.ndarray]:
    with np.load(vectors_dir / "model" / "io.npz") as data:
        return {k: data[k] for k in data.files}


def case_inputs(io: dict[str, np.ndarray], case: str) -> dict[str, np.ndarray]:
    return {b: io[f"{case}/input/{b}"] for b in BRANCHES}


@pytest.mark.vectors
@pytest.mark.parametrize("case", ["video", "image"])
def test_reference_vectors(vector_model, io, case):
    maps = run(vector_model, case_inputs(io, case))
    for b in BRANCHES:
        ref = io[f"{case}/score_map/{b}"]
        assert maps[b].shape == ref.shape, b
        np.testing.assert_allclose(maps[b], ref, rtol=0, atol=ATOL, err_msg=f"{case} {b} score map")
    scores = branch_scores(maps)
    for k in (*BRANCHES, "overall"):
        assert scores[k].shape == (1,)
        assert abs(float(scores[k][0]) - float(io[f"{case}/score/{k}"])) <= ATOL, k


@pytest.mark.vectors
def test_config_json_round_trip(vectors_dir):
    raw = json.loads((vectors_dir / "model" / "config.json").read_text())
    cfg = ModelConfig.from_json(raw)
    assert cfg.to_dict() == raw
    assert cfg.inputs["technical"] == tuple(raw["inputs"]["technical"])


@pytest.mark.vectors
def test_batch_of_two_equals_one_by_one(vector_model, io):
    a = case_inputs(io, "video")
    b = {k: np.ascontiguousarray(v[..., ::-1]) * 0.9 for k, v in a.items()}  # other content
    both = run(vector_model, {k: np.concatenate([a[k], b[k]]) for k in BRANCHES})
    alone_a, alone_b = run(vector_model, a), run(vector_model, b)
    for k in BRANCHES:
        assert both[k].shape[0] == 2
        assert np.abs(alone_a[k] - alone_b[k]).max() > 1e-3, f"{k}: test inputs give equal maps"
        np.testing.assert_allclose(both[k][:1], alone_a[k], rtol=0, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(both[k][1:], alone_b[k], rtol=0, atol=1e-5, err_msg=k)


# ----------------------------------------------------------------------------- other configurations

def random_config(rng: random.Random) -> ModelConfig:
    """A small random architecture whose technical and aesthetic grids agree at 32 px per cell."""
    stages = rng.randint(2, 4)
    embed = rng.choice([4, 8])
    out = embed * 2 ** (stages - 1)
    return ModelConfig(
        technical=SwinConfig(
            embed_dim=embed, depths=tuple(rng.randint(1, 3) for _ in range(stages)),
            num_heads=tuple(rng.choice([1, 2]) for _ in range(stages)),
            window_size=(rng.choice([2, 4, 8]), rng.choice([3, 5, 7]), rng.choice([2, 4, 7])),
            patch_size=(2, 4, 4), frag_biases=tuple(rng.random() < 0.7 for _ in range(stages))),
        aesthetic=ConvNeXtConfig(depths=tuple(rng.randint(1, 3) for _ in range(stages)),
                                 dims=tuple(max(4, out // 2 ** (stages - 1 - i)) for i in range(stages)),
                                 inflate_strategy=rng.choice(["131", "3", "1", "135"])),
        semantic=ClipVitConfig(width=16, layers=rng.randint(1, 2), heads=rng.choice([1, 2, 4]),
                               patch_size=rng.choice([8, 14]), output_dim=rng.choice([8, 24])),
        gate_channels=rng.choice([8, 16]), head_hidden=rng.choice([2, 4]),
        inputs={"semantic": (1, 3, 4, 56, 56), "technical": (1, 3, 8, 64, 96),
                "aesthetic": (1, 3, 8, 64, 96)})


def randomise(model: COVER, seed: int) -> COVER:
    """Non-trivial weights everywhere (zero fragment tables or 1e-6 layer scales hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize("seed", range(4))
def test_random_configs_run_and_batch(seed):
    rng = random.Random(seed)
    cfg = random_config(rng)
    torch.manual_seed(seed)
    model = randomise(COVER(cfg), seed)
    stages = len(cfg.aesthetic.dims)
    cell = 4 * 2 ** (stages - 1)  # input pixels per feature cell, both backbones
    gh, gw = rng.randint(1, 4), rng.randint(1, 4)
    for t in (1, 2 * rng.randint(1, 6)):
        gen = np.random.default_rng(seed)
        shapes = {"semantic": (2, 3, ceil(t / 2), 40, 48),
                  "technical": (2, 3, t, gh * cell, gw * cell),
                  "aesthetic": (2, 3, t, gh * cell, gw * cell)}
        views = {k: gen.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        maps = run(model, views)
        t_out = max(1, t // 2)
        assert maps["technical"].shape == (2, 1, t_out, gh, gw)
        assert maps["aesthetic"].shape == (2, 1, t_out, gh, gw)
        assert maps["semantic"].shape == (2, 1, t_out, *model.semantic_grid)
        assert all(np.isfinite(m).all() for m in maps.values())
        first = run(model, {k: v[:1] for k, v in views.items()})
        for k in BRANCHES:
            np.testing.assert_allclose(maps[k][:1], first[k], rtol=0, atol=1e-5, err_msg=k)


def test_semantic_features_are_unit_norm_per_frame():
    cfg = random_config(random.Random(11))
    model = randomise(COVER(cfg), 11)
    with torch.inference_mode():
        score, feats = model.forward_semantic(torch.randn(2, 3, 3, 28, 28))
    assert feats.shape == (2, cfg.semantic.output_dim, 3)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, 3))
    assert score.shape == (2, 1, 3, *model.semantic_grid)
    # one score per frame, spread over the grid
    assert torch.equal(score, score[..., :1, :1].expand_as(score))


def test_single_frame_is_fed_twice():
    cfg = random_config(random.Random(3))
    model = randomise(COVER(cfg), 3)
    with torch.inference_mode():
        _, sem = model.forward_semantic(torch.randn(1, 3, 1, 28, 28))
        frame = torch.randn(1, 3, 1, 64, 96)
        for fwd in (model.forward_technical, model.forward_aesthetic):
            torch.testing.assert_close(fwd(frame, sem), fwd(torch.cat([frame, frame], 2), sem))


def test_official_backbones_on_small_inputs():
    """Official Swin-T / ConvNeXt-T / gates / heads (CLIP cut to one layer to stay fast)."""
    official = ModelConfig.official()
    assert official.semantic.heads == official.semantic.width // 64
    cfg = ModelConfig(semantic=ClipVitConfig(layers=1))
    model = COVER(cfg).eval()
    assert model.semantic_grid == (7, 7)
    with torch.inference_mode():
        maps = model(torch.randn(1, 3, 2, 56, 56), torch.randn(1, 3, 4, 96, 128),
                     torch.randn(1, 3, 4, 96, 128))
    assert maps["technical"].shape == maps["aesthetic"].shape == (1, 1, 2, 3, 4)
    assert maps["semantic"].shape == (1, 1, 2, 7, 7)


def test_cross_gate_formula():
    """out = out_project_y(y' * gelu_tanh(in_project_x(Conv_0(x)))) + y', y' = Conv_1(y)."""
    gate = CrossGatingBlock(4, 4, 4).eval()  # train mode adds upstream's dropout
    with torch.no_grad():
        for lin in (gate.Conv_0, gate.Conv_1, gate.in_project_x, gate.out_project_y):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    x = torch.linspace(-3, 3, 8).view(1, 4, 2)  # (B, C, T)
    y = torch.randn(1, 4, 2, 3, 5)
    g = F.gelu(x, approximate="tanh")[..., None, None]  # upstream: nn.GELU(approximate='tanh')
    torch.testing.assert_close(gate(x, y), y * g + y, rtol=0, atol=1e-6)


def test_mismatched_frame_counts_are_refused():
    model = COVER(random_config(random.Random(5))).eval()
    with torch.inference_mode():
        _, sem = model.forward_semantic(torch.randn(1, 3, 3, 28, 28))
        with pytest.raises(ValueError, match="frame count"):
            model.forward_technical(torch.randn(1, 3, 8, 64, 96), sem)


# ----------------------------------------------------------------------------- geometry helpers

@pytest.mark.parametrize("out_size,in_size", [(56, 7), (28, 7), (24, 1), (14, 7), (7, 7), (9, 4),
                                              (63, 7), (100, 3), (8, 4), (5, 2), (3, 5)])
def test_nearest_source_index_matches_torch(out_size, in_size):
    src = torch.arange(in_size, dtype=torch.float32).view(1, 1, -1)
    ref = F.interpolate(src, size=out_size, mode="nearest").view(-1).long().numpy()
    np.testing.assert_array_equal(swin3d.nearest_source_index(out_size, in_size), ref)


def test_relative_position_index_brute_force():
    window = (2, 3, 4)
    idx = swin3d.relative_position_index(window)
    coords = [(d, h, w) for d in range(2) for h in range(3) for w in range(4)]
    spans = [2 * s - 1 for s in window]
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            rel = [x - y + s - 1 for x, y, s in zip(a, b, window)]
            assert idx[i, j] == (rel[0] * spans[1] + rel[1]) * spans[2] + rel[2]


def test_window_layout_clips_and_pads():
    lay = swin3d.window_layout((20, 56, 56), (8, 7, 7), (4, 3, 3))
    assert (lay.window, lay.shift, lay.padded) == ((8, 7, 7), (4, 3, 3), (24, 56, 56))
    lay = swin3d.window_layout((4, 7, 10), (8, 7, 7), (4, 3, 3))
    assert (lay.window, lay.shift, lay.padded) == ((4, 7, 7), (0, 0, 3), (4, 7, 14))
    assert lay.num_windows == 2 and lay.tokens == 196
    labels = swin3d.shift_region_labels(lay)
    assert labels.shape == (2, 196)
    assert len(np.unique(labels[0])) == 1 and len(np.unique(labels[1])) == 2
    coords = swin3d.fragment_coords(lay)
    assert coords.shape == (2, 196, 2) and coords.max() <= 6


def test_output_size_helpers_match_backbones():
    cfg = random_config(random.Random(8))
    model = COVER(cfg).eval()
    for thw in [(2, 64, 96), (4, 50, 70), (3, 33, 129)]:
        x = torch.randn(1, 3, *thw)
        with torch.inference_mode():
            assert tuple(model.technical_backbone(x).shape[2:]) == swin3d.output_size(cfg.technical, thw)
            assert tuple(model.aesthetic_backbone(x).shape[2:]) == convnext3d.output_size(cfg.aesthetic, thw)


# ----------------------------------------------------------------------------- config

def test_official_config_round_trip():
    cfg = ModelConfig.official()
    assert ModelConfig.from_json(cfg.to_dict()) == cfg
    assert cfg.inputs == {"semantic": (1, 3, 20, 512, 512), "technical": (1, 3, 40, 224, 224),
                          "aesthetic": (1, 3, 40, 224, 224)}
    assert (cfg.technical.out_channels, cfg.aesthetic.out_channels, cfg.semantic.output_dim,
            cfg.gate_channels) == (768, 768, 768, 768)


@pytest.mark.parametrize("bad,match", [
    ({"technical": {"embed_dim": 16, "depthz": [1]}}, "technical.depthz"),
    ({"technical": {"embed_dim": 10, "num_heads": [3, 6, 12, 24]}}, "heads"),
    ({"aesthetic": {"inflate_strategy": "12"}}, "inflate_strategy"),
    ({"inputs": {"semantic": [1, 3, 4, 112]}}, "inputs"),
])
def test_bad_config_is_refused(bad, match, tmp_path):
    with pytest.raises(InputError, match=match):
        ModelConfig.from_json(bad)
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        ModelConfig.from_json(path)
