"""Pure sampling maths: frame indices, fragment geometry, bilinear taps and resizing."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cover_engine.runtime.views import geometry, resize, sampling
from cover_engine.runtime.constants import OFFICIAL_VIEWS
from cover_engine.runtime.views.assemble import ViewAssembler, build_views, normalise, plan_views

SEMANTIC, TECHNICAL, AESTHETIC = (OFFICIAL_VIEWS[n] for n in ("semantic", "technical", "aesthetic"))


def upstream_indices(n, spec, offsets):
    """docs/cover-behaviour.md section 3.1 written out with loops, given the per-segment offsets."""
    out = []
    for i in range(spec.t_frag):
        for k in range(spec.fsize_t):
            out.append((i * (n // spec.t_frag) + offsets[i] + k * spec.frame_interval) % n)
    return np.array(out)


def offset_range(n, spec):
    return n // spec.t_frag - spec.fsize_t * spec.frame_interval


@pytest.mark.parametrize("spec", [SEMANTIC, TECHNICAL,
                                  replace(SEMANTIC, clip_len=12, t_frag=4, frame_interval=3)])
@pytest.mark.parametrize("n", [1, 2, 7, 19, 20, 39, 40, 41, 64, 81, 240, 1001])
def test_deterministic_indices_are_the_middle_rule(n, spec):
    high = offset_range(n, spec)
    expected = upstream_indices(n, spec, [high // 2 if high > 0 else 0] * spec.t_frag)
    got = sampling.frame_indices(n, spec)
    assert got.dtype == np.int64 and got.shape == (spec.t_frag * spec.fsize_t,)
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= 0 and got.max() < n


def test_random_indices_stay_in_range_and_repeat_with_the_seed():
    n, spec = 1000, TECHNICAL
    high = offset_range(n, spec)
    draws = [sampling.frame_indices(n, spec, rng=np.random.default_rng(s)) for s in (1, 1, 2)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    offsets = draws[0][::spec.fsize_t] - np.arange(spec.t_frag) * (n // spec.t_frag)
    assert offsets.min() >= 0 and offsets.max() < high
    np.testing.assert_array_equal(draws[0], upstream_indices(n, spec, offsets))


def test_clips_spread_evenly_and_one_clip_is_the_middle():
    n, spec, clips = 600, SEMANTIC, 4
    high = offset_range(n, spec)
    np.testing.assert_array_equal(sampling.frame_indices(n, spec, clip=0, clips=1),
                                  sampling.frame_indices(n, spec))
    firsts = [int(sampling.frame_indices(n, spec, clip=k, clips=clips)[0]) for k in range(clips)]
    assert firsts == [(2 * k + 1) * high // (2 * clips) for k in range(clips)]
    assert len(set(firsts)) == clips and all(0 <= f < high for f in firsts)
    with pytest.raises(ValueError):
        sampling.frame_indices(n, spec, clip=clips, clips=clips)


def test_clip_rng_streams_are_independent_and_reproducible():
    assert sampling.clip_rng(None, 0) is None
    a, b, c = (sampling.clip_rng(5, 0), sampling.clip_rng(5, 0), sampling.clip_rng(5, 1))
    assert a.integers(1 << 30) == b.integers(1 << 30) != c.integers(1 << 30)


def test_needed_frames_is_the_sorted_union():
    sets = sampling.view_indices(64, OFFICIAL_VIEWS)
    other = sampling.view_indices(64, OFFICIAL_VIEWS, clip=1, clips=2)
    got = sampling.needed_frames(sets, other)
    expected = sorted({int(i) for s in (sets, other) for a in s.values() for i in a})
    assert got.tolist() == expected
    assert sampling.view_indices(64, OFFICIAL_VIEWS, is_image=True)["semantic"].tolist() == [0]


# ----------------------------------------------------------------------------- geometry


def test_fragment_grid_follows_upstream_for_big_frames():
    grid = geometry.fragment_grid(270, 480, TECHNICAL)
    assert grid.upsample is None and (grid.frame_h, grid.frame_w) == (270, 480)
    assert grid.starts_h.tolist() == [min(270 // 7 * i, 270 - 32) for i in range(7)]
    assert grid.starts_w.tolist() == [min(480 // 7 * i, 480 - 32) for i in range(7)]
    assert (grid.range_h, grid.range_w) == (270 // 7 - 32, 480 // 7 - 32)


def test_small_frames_upsample_but_keep_the_original_grid():
    grid = geometry.fragment_grid(180, 320, TECHNICAL)
    ratio = min(180 / 224, 320 / 224)
    assert grid.upsample == 1 / ratio
    assert (grid.frame_h, grid.frame_w) == (int(180 * (1 / ratio)), int(320 * (1 / ratio)))
    assert grid.starts_h.tolist() == [min(180 // 7 * i, 180 - 32) for i in range(7)]
    assert grid.range_h == 0  # a 25-pixel cell is smaller than a fragment


@pytest.mark.parametrize("size", [(1, 1), (16, 16), (31, 500), (500, 20), (224, 224), (2, 3000)])
def test_fragment_maps_stay_inside_the_sampled_frame(size):
    grid = geometry.fragment_grid(*size, TECHNICAL)
    for rng in (None, np.random.default_rng(0)):
        oh = sampling.choose_offsets(grid.range_h, (7, 7), rng=rng)
        ow = sampling.choose_offsets(grid.range_w, (7, 7), rng=rng)
        rows, cols = geometry.fragment_maps(*geometry.fragment_origins(grid, oh, ow), 32, 32)
        assert rows.shape == cols.shape == (224, 224)
        assert rows.min() >= 0 and rows.max() < grid.frame_h
        assert cols.min() >= 0 and cols.max() < grid.frame_w


def test_fragment_maps_tile_crops():
    ys = np.array([[0, 10], [20, 30]])
    xs = np.array([[1, 2], [3, 4]])
    rows, cols = geometry.fragment_maps(ys, xs, 2, 3)
    assert rows.shape == (4, 6)
    assert rows[:, 0].tolist() == [0, 1, 20, 21] and rows[:, 3].tolist() == [10, 11, 30, 31]
    assert cols[0].tolist() == [1, 2, 3, 2, 3, 4] and cols[2].tolist() == [3, 4, 5, 4, 5, 6]


def test_axis_tables_weights_and_identity():
    same = geometry.resize_table(7, 7)
    assert same.index0.tolist() == same.index1.tolist() == list(range(7))
    assert not same.weight.any()
    table = geometry.resize_table(4, 8)  # scale 0.5: src = 0.5 * (o + 0.5) - 0.5
    assert table.index0.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert table.index1.tolist() == [1, 1, 1, 2, 2, 3, 3, 3]
    np.testing.assert_allclose(table.weight, [0, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75, 0.25])
    one = geometry.resize_table(1, 5)
    assert one.index0.tolist() == one.index1.tolist() == [0] * 5


def test_scale_factor_table_uses_the_given_factor():
    # 10 * 1.99 -> 19 outputs; the mapping uses 1 / 1.99, not 10 / 19.
    table = geometry.scale_factor_table(10, 1.99)
    assert len(table.index0) == 19
    src = np.float32(1 / 1.99) * (np.float32(18) + np.float32(0.5)) - np.float32(0.5)
    assert table.index0[18] == int(src) and table.weight[18] == np.float32(src - int(src))


# ----------------------------------------------------------------------------- against torch


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def assert_same_but_ties(ours, ref, raw, tie):
    """Equal, except by one level where torch's float value sits on a rounding boundary: torch
    versions differ from upstream's in the last bits (upstream's own views match exactly, see
    test_preprocess_vectors), and those bits decide ties."""
    assert ours.shape == ref.shape
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1
    off = np.abs(raw[diff > 0] - np.floor(raw[diff > 0]) - tie)
    assert np.all((off < 1e-3) | (off > 1 - 1e-3))


@pytest.mark.parametrize("shape,out", [((37, 53), (64, 20)), ((270, 480), (224, 224)),
                                       ((3, 2), (9, 11)), ((64, 64), (64, 30))])
def test_resize_matches_torch_bilinear(torch, shape, out):
    frame = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    ours = resize.resize(frame, geometry.resize_table(shape[0], out[0]),
                         geometry.resize_table(shape[1], out[1]))
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    raw = torch.nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False)
    raw = raw[0].permute(1, 2, 0).numpy()
    assert_same_but_ties(ours, np.round(raw), raw, tie=0.5)


@pytest.mark.parametrize("shape,factor", [((180, 320), 224 / 180), ((16, 16), 14.0),
                                          ((10, 7), 1.99), ((1, 1), 224.0)])
def test_upsample_matches_torch_scale_factor(torch, shape, factor):
    frame = np.random.default_rng(1).integers(0, 256, shape + (3,), dtype=np.uint8)
    ours = resize.upsample(frame, geometry.scale_factor_table(shape[0], factor),
                           geometry.scale_factor_table(shape[1], factor))
    video = torch.from_numpy(frame).permute(2, 0, 1)[:, None]  # (C, T=1, H, W) like upstream
    raw = torch.nn.functional.interpolate(video / 255.0, scale_factor=factor, mode="bilinear")
    ref = (raw * 255.0).type_as(video)[:, 0].permute(1, 2, 0).numpy()
    assert_same_but_ties(ours, ref, (raw * 255.0)[:, 0].permute(1, 2, 0).numpy(), tie=0.0)


def test_upsample_truncates_like_upstream():
    frame = np.full((2, 2, 3), 100, np.uint8)
    table = geometry.scale_factor_table(2, 2.0)
    x = np.float32(100) / np.float32(255) * np.float32(255)  # 99.99999: truncates to 99
    assert resize.upsample(frame, table, table).max() == int(x)
    doubled = geometry.resize_table(2, 4)
    assert resize.resize(frame, doubled, doubled).min() == 100


def test_take_reads_only_what_the_taps_need():
    class Probe:
        def __init__(self, frame):
            self.frame, self.asked = frame, []

        def take(self, rows, cols):
            self.asked.append((len(rows), len(cols)))
            return self.frame[np.ix_(rows, cols)]

    frame = np.random.default_rng(2).integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
    probe = Probe(frame)
    rows, cols = geometry.resize_table(2160, 224), geometry.resize_table(3840, 224)
    np.testing.assert_array_equal(resize.resize(probe, rows, cols),
                                  resize.resize(frame, rows, cols))
    assert probe.asked[0][0] <= 448 and probe.asked[0][1] <= 448


# ----------------------------------------------------------------------------- views


def small_specs():
    return {"semantic": replace(SEMANTIC, clip_len=4, t_frag=4, size_h=56, size_w=40),
            "technical": replace(TECHNICAL, clip_len=8, t_frag=4, aligned=4, fragments_h=3,
                                 fragments_w=2),
            "aesthetic": replace(AESTHETIC, clip_len=8, t_frag=4, size_h=32, size_w=32)}


def test_build_views_shapes_alignment_and_images():
    rng = np.random.default_rng(3)
    frames = {i: rng.integers(0, 256, (120, 90, 3), dtype=np.uint8) for i in range(30)}
    specs = small_specs()
    views = build_views(frames, 30, specs, rng=np.random.default_rng(4))
    assert views["semantic"].shape == (3, 4, 56, 40)
    assert views["technical"].shape == (3, 8, 96, 64)
    assert views["aesthetic"].shape == (3, 8, 32, 32)
    plans = plan_views(30, 120, 90, specs, rng=np.random.default_rng(4))
    tech = plans["technical"]
    assert tech.origins.shape == (2, 2, 3, 2) and tech.aligned == 4
    ys, xs = tech.origins[1]
    t = 5  # second run of 4 frames
    expected = frames[int(tech.indices[t])][ys[2, 1]:ys[2, 1] + 32, xs[2, 1]:xs[2, 1] + 32]
    np.testing.assert_array_equal(views["technical"][:, t, 64:96, 32:64],
                                  expected.transpose(2, 0, 1))
    image = build_views({0: frames[0]}, 1, specs, is_image=True)
    assert {k: v.shape[1] for k, v in image.items()} == {k: 1 for k in specs}


def test_assembler_accepts_frames_in_any_order_and_reports_gaps():
    rng = np.random.default_rng(5)
    frames = {i: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(16)}
    plans = plan_views(16, 64, 64, small_specs())
    forward, backward = ViewAssembler(plans), ViewAssembler(plans)
    for i in forward.needed:
        forward.add(int(i), frames[int(i)])
    for i in forward.needed[::-1]:
        backward.add(int(i), frames[int(i)])
    for name, view in forward.views().items():
        np.testing.assert_array_equal(view, backward.views()[name])
    partial = ViewAssembler(plans)
    partial.add(int(partial.needed[0]), frames[int(partial.needed[0])])
    with pytest.raises(ValueError, match="never added"):
        partial.views()


def test_normalise_is_upstreams_float32_formula():
    view = np.random.default_rng(6).integers(0, 256, (3, 2, 4, 4), dtype=np.uint8)
    out = normalise(view, SEMANTIC)
    assert out.dtype == np.float32
    mean = np.float32(SEMANTIC.mean[1])
    std = np.float32(SEMANTIC.std[1])
    np.testing.assert_array_equal(out[1], (view[1].astype(np.float32) - mean) / std)
