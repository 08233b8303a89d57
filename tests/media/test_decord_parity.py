"""The default colour conversion gives decord's frames exactly (decord is what upstream decoded
with). Needs the test-only ``eva-decord`` wheel (x86-64, Python < 3.12); skipped without it.

decord converts with FFmpeg 4.1's swscale, whose code path depends on the frame size, bit
depth and chroma format (see ``colour.py``), so the clips cover each: even and odd heights and
widths, 8 and 10 bits, 4:2:0 and 4:4:4, BT.601/BT.709/BT.2020, limited, full and unsignalled
range, H.264, HEVC and VP9, and rotation metadata.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers.media import has_encoder, textured, write_video

from cover_engine.runtime.media.decode import probe, read_frames

decord = pytest.importorskip("decord", reason="eva-decord (a test-only wheel) is not installed")

X265 = {"x265-params": "log-level=error"}
#: name: (codec, pix_fmt, width, height, colorspace, color_range, options, rotation)
CLIPS = {
    "h264-unsignalled": ("libx264", "yuv420p", 64, 48, None, None, None, None),
    "h264-bt709-limited": ("libx264", "yuv420p", 66, 38, 1, 1, None, None),
    "h264-bt601-full": ("libx264", "yuv420p", 64, 48, 6, 2, None, None),
    "h264-bt709-full-yuvj": ("libx264", "yuvj420p", 64, 48, 1, 2, None, None),
    "h264-bt2020": ("libx264", "yuv420p", 64, 48, 9, 1, None, None),
    "h264-10bit": ("libx264", "yuv420p10le", 64, 48, 1, 1, None, None),
    "h264-444": ("libx264", "yuv444p", 64, 48, None, None, None, None),
    "hevc-bt709": ("libx265", "yuv420p", 64, 48, 1, 1, X265, None),
    "hevc-10bit-full": ("libx265", "yuv420p10le", 64, 48, 6, 2, X265, None),
    "vp9-odd-height": ("libvpx-vp9", "yuv420p", 64, 49, 1, 1, {}, None),
    "vp9-odd-width": ("libvpx-vp9", "yuv420p", 67, 50, 6, 2, {}, None),
    "vp9-odd-both": ("libvpx-vp9", "yuv420p", 65, 49, None, None, {}, None),
    "vp9-444-odd-width": ("libvpx-vp9", "yuv444p", 67, 50, 1, 1, {}, None),
    "h264-rotated-90": ("libx264", "yuv420p", 66, 38, None, None, None, 90),
    "h264-rotated-270": ("libx264", "yuv420p", 66, 38, None, None, None, -90),
    "h264-rotated-180": ("libx264", "yuv420p", 66, 38, None, None, None, 180),
}


def _clip(tmp_path, name):
    codec, pix_fmt, w, h, space, rng, options, rotation = CLIPS[name]
    if not has_encoder(codec):
        pytest.skip(f"FFmpeg has no {codec} encoder here")
    suffix = ".webm" if codec == "libvpx-vp9" else ".mp4"
    frames = [textured(h, w, t, noise=40) for t in range(4)]
    return write_video(tmp_path / f"{name}{suffix}", frames, codec=codec, pix_fmt=pix_fmt,
                       colorspace=space, color_range=rng, options=options, rotation=rotation)


def _decord_frames(path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_frames_equal_decords(tmp_path, name):
    path = _clip(tmp_path, name)
    theirs = _decord_frames(path)
    ours = np.stack([rgb for _, rgb in read_frames(path, range(len(theirs)))])
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    exact = np.stack([rgb for _, rgb in read_frames(path, range(len(theirs)), colour="exact")])
    if CLIPS[name][-1] is None:  # not vacuous: the exact maths gives other numbers (4:4:4 is
        assert (exact != theirs).any()  # rounded by decord too, so there only a few differ)


def test_the_clips_take_every_swscale_path(tmp_path):
    """The parity test above reaches each code path of colour.sws_conversion."""
    from cover_engine.runtime.media.colour import chroma_shift, sws_path

    seen = set()
    for name, (codec, pix_fmt, w, h, *_rest) in CLIPS.items():
        bits = 10 if "10" in pix_fmt else 8
        sx = 0 if "444" in pix_fmt else 1
        seen.add(sws_path(bits, h, w, sx, sx))
    assert seen == {"mmx", "table", "full"}
    assert chroma_shift(67, 34) == 1
    info = probe(_clip(tmp_path, "vp9-odd-both"))
    assert (info.width, info.height) == (65, 49)


@pytest.mark.parametrize("dropped", [1, 2])
def test_indices_on_packets_an_edit_list_drops_read_as_upstream_read_them(tmp_path, dropped):
    """Upstream read each distinct index in increasing order on one ``VideoReader``."""
    from helpers.media import drop_by_edit_list

    clip = write_video(tmp_path / "full.mp4", [textured(96, 128, t) for t in range(30)],
                       options={"bf": "2", "crf": "20"}, rate=30)
    cut = drop_by_edit_list(clip, tmp_path / "cut.mp4", frames=dropped, rate=30)
    assert len(decord.VideoReader(str(cut))) == probe(cut).num_frames == 30
    for wanted in ([0, 10, 29], [5, 29 - dropped, 29], [3, 7, 12, 28, 29], range(30)):
        reader = decord.VideoReader(str(cut))
        upstream = {i: reader[i].asnumpy() for i in sorted(set(wanted))}
        ours = dict(read_frames(cut, wanted))
        assert sorted(ours) == sorted(upstream)
        assert all(np.array_equal(ours[i], upstream[i]) for i in upstream), wanted
