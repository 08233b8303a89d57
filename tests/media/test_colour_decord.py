"""The decord conversion's maths without decord: small frames whose RGB was produced by the
libswscale that decord bundles (FFmpeg 4.1, configured as decord's filter graph, on x86-64;
``tests/media/data/decord_swscale.npz``), and the invariants of the tables. ``test_decord_parity.py``
holds the same code to decord itself where the wheel installs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cover_engine.runtime.media.colour import (SWS_PATHS, bilinear_taps, sws_constants,
                                               sws_conversion, sws_rgb)

DATA = np.load(Path(__file__).parent / "data" / "decord_swscale.npz")
CASES = sorted({key.split("/")[0] for key in DATA.files})


def _case(name):
    sx, sy, bits, full = (int(x) for x in DATA[f"{name}/meta"])
    y, u, v = (DATA[f"{name}/{k}"] for k in "yuv")
    conv = sws_conversion(str(DATA[f"{name}/matrix"]), bool(full), bits, *y.shape, sx, sy)
    return conv, y, u, v, DATA[f"{name}/rgb"]


@pytest.mark.parametrize("name", CASES)
def test_swscale_reference_frames_are_reproduced(name):
    conv, y, u, v, want = _case(name)
    assert conv.path == name.split("-")[0]
    np.testing.assert_array_equal(sws_rgb(y, u, v, conv), want)
    rows, cols = np.array([0, y.shape[0] - 1, 1]), np.array([y.shape[1] - 1, 0, 2, 2])
    np.testing.assert_array_equal(sws_rgb(y, u, v, conv, rows=rows, cols=cols),
                                  want[np.ix_(rows, cols)])


def test_reference_frames_cover_every_path_and_the_overflow():
    assert {name.split("-")[0] for name in CASES} == set(SWS_PATHS)
    conv, y, u, v, want = _case("full")
    assert (y[0, 0], u[0, 0], v[0, 0]) == (250, 255, 128)
    assert want[0, 0].tolist() == [255, 245, 0]  # swscale's int32 wraps: blue comes out 0


def test_constants_are_swscales():
    limited, full = sws_constants("bt601", False), sws_constants("bt601", True)
    assert (limited["mmx_cy"], limited["mmx_yoff"], full["mmx_cy"], full["mmx_yoff"]) == \
        (9539, 128, 8192, 0)
    assert limited["tab_cy"] == 76309 and limited["tab_k"] == 326 and full["tab_k"] == 384
    assert limited["mmx_vr"] == 13075 and full["mmx_vr"] == (104597 * 224 // 255 * 8192 + 32768) >> 16
    assert limited["mmx_ug"] < 0 and limited["mmx_vg"] < 0
    with pytest.raises(ValueError, match="unknown YUV matrix"):
        sws_constants("srgb", False)


@pytest.mark.parametrize("src,dst", [(1, 1), (2, 3), (3, 5), (25, 49), (540, 1079), (9, 17)])
def test_bilinear_taps_stay_inside_and_sum_to_one(src, dst):
    for one in (1 << 12, 1 << 14):
        pos, taps = bilinear_taps(src, dst, one)
        assert len(pos) == len(taps) == dst
        for p, w in zip(pos, taps):
            assert sum(w) == one and 1 <= len(w) <= 2
            assert 0 <= p and p + sum(1 for x in w if x) <= src
        assert pos == sorted(pos)


def test_row_table_is_first_row_or_average():
    conv = sws_conversion("bt709", False, 8, 49, 64)
    assert conv.path == "table"
    rows, avg = conv.rows >> 1, conv.rows & 1
    # the last row's taps are (row 23: 0, row 24: 4096), which swscale's output still averages
    assert rows[0] == 0 and rows[-1] == 23 and avg[-1] and rows.max() <= 23
    assert set(avg.tolist()) == {0, 1} and not avg[0] and avg[2]
    even = sws_conversion("bt709", False, 8, 48, 64)
    np.testing.assert_array_equal(even.rows, (np.arange(48) >> 1) << 1)
    with pytest.raises(ValueError, match="conversion made for 64x48"):
        sws_rgb(np.zeros((49, 64), np.uint8), np.zeros((25, 32), np.uint8),
                np.zeros((25, 32), np.uint8), even)
