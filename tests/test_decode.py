"""Decoding: counts, colour, formats and every kind of bad input, on media the tests write."""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest

from cover_engine.runtime.colour import MATRICES, yuv_to_rgb, yuv_to_rgb_coefficients
from cover_engine.runtime.constants import OFFICIAL_VIEWS
from cover_engine.runtime.decode import Frame, ShortVideoError, iter_frames, probe, read_frames
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.views import build_views, load_views, normalise

from media import flat, frame_number, has_encoder, pattern, write_audio, write_image, write_video

SMALL = {"semantic": replace(OFFICIAL_VIEWS["semantic"], clip_len=4, t_frag=4, size_h=28,
                             size_w=28),
         "technical": replace(OFFICIAL_VIEWS["technical"], clip_len=8, t_frag=4, aligned=8,
                              fragments_h=2, fragments_w=2),
         "aesthetic": replace(OFFICIAL_VIEWS["aesthetic"], clip_len=8, t_frag=4, size_h=32,
                              size_w=32)}


def colour_error(path, sources):
    frames = dict(read_frames(path, range(len(sources))))
    assert sorted(frames) == list(range(len(sources)))
    diffs = [np.abs(frames[i].astype(int) - src.astype(int)) for i, src in enumerate(sources)]
    return max(d.max() for d in diffs), float(np.mean([d.mean() for d in diffs]))


# ----------------------------------------------------------------------------- formats

CODECS = [  # (file, encoder, pix_fmt, options, max error, mean error) on the smooth pattern
    ("h264.mp4", "libx264", "yuv420p", None, 6, 1.5),
    ("hevc.mkv", "libx265", "yuv420p", {"x265-params": "lossless=1:log-level=none"}, 6, 1.5),
    ("vp9.webm", "libvpx-vp9", "yuv420p", {"lossless": "1"}, 6, 1.5),
    ("mpeg4.avi", "mpeg4", "yuv420p", {"qscale": "1"}, 24, 3.5),
    ("h264_10bit.mp4", "libx264", "yuv420p10le", None, 6, 1.5),
    ("h264_444.mp4", "libx264", "yuv444p", None, 4, 1.0),
]


@pytest.mark.parametrize("name,codec,pix_fmt,options,max_err,mean_err", CODECS)
def test_codecs_decode_all_frames_with_the_right_colour(tmp_path, name, codec, pix_fmt, options,
                                                        max_err, mean_err):
    if not has_encoder(codec):
        pytest.skip(f"no {codec} encoder in this FFmpeg")
    sources = [pattern(48, 64, t) for t in range(5)]
    path = write_video(tmp_path / name, sources, codec=codec, pix_fmt=pix_fmt, options=options)
    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (5, 64, 48)
    assert info.pix_fmt == pix_fmt and not info.is_image and info.fps == 25
    assert info.matrix == "bt601" and not info.full_range  # unsignalled
    worst, mean = colour_error(path, sources)
    assert worst <= max_err and mean <= mean_err, (worst, mean)


@pytest.mark.parametrize("colorspace,color_range,pix_fmt,matrix", [
    (1, 1, "yuv420p", "bt709"), (1, 2, "yuv420p", "bt709"), (9, 1, "yuv420p10le", "bt2020")])
def test_signalled_matrix_and_range_are_used(tmp_path, colorspace, color_range, pix_fmt, matrix):
    sources = [pattern(48, 64, t) for t in range(2)]
    signalled = write_video(tmp_path / "s.mkv", sources, pix_fmt=pix_fmt, colorspace=colorspace,
                            color_range=color_range)
    info = probe(signalled)
    assert info.matrix == matrix and info.full_range == (color_range == 2)
    assert colour_error(signalled, sources)[0] <= 6
    # The same pixels, unsignalled, decode (as BT.601 limited) visibly wrong: the check above
    # would see a matrix or range that is ignored.
    plain = write_video(tmp_path / "plain.mkv", sources, pix_fmt=pix_fmt, colorspace=colorspace,
                        color_range=color_range, signal=False)
    assert probe(plain).matrix == "bt601" and not probe(plain).full_range
    assert colour_error(plain, sources)[0] > 8


def test_odd_sizes_portrait_and_one_frame(tmp_path):
    odd = [pattern(33, 47, t) for t in range(3)]
    for codec, pix_fmt in (("libvpx-vp9", "yuv420p"), ("libx264", "yuv444p")):
        if has_encoder(codec):
            path = write_video(tmp_path / f"odd_{codec}.mkv", odd, codec=codec, pix_fmt=pix_fmt,
                               options={"lossless": "1"} if "vpx" in codec else None)
            assert (probe(path).width, probe(path).height) == (47, 33)
            worst, mean = colour_error(path, odd)  # steep ramps: nearest chroma costs a little
            assert worst <= 12 and mean <= 2.5
    portrait = write_video(tmp_path / "portrait.mp4", [pattern(96, 54, t) for t in range(4)])
    info = probe(portrait)
    assert (info.width, info.height, info.num_frames) == (54, 96, 4)
    one = write_video(tmp_path / "one.mp4", [pattern(64, 64)])
    assert probe(one).num_frames == 1
    views, _ = load_views(one, OFFICIAL_VIEWS)
    assert views["technical"].shape == (1, 3, 40, 224, 224)
    assert np.array_equal(views["aesthetic"][0, :, 0], views["aesthetic"][0, :, -1])


def test_vfr_frames_are_indexed_in_order(tmp_path):
    stamps = [0, 1, 5, 6, 20, 21]
    path = write_video(tmp_path / "vfr.mkv", [flat(32, 32, t) for t in range(6)], pts=stamps,
                       time_base=Fraction(1, 25))
    with av.open(str(path)) as container:
        times = [f.time for f in container.decode(video=0)]
    assert len(set(np.round(np.diff(times), 3))) > 1  # really variable frame rate
    info = probe(path)
    assert info.num_frames == 6 and info.counted  # Matroska has no frame count
    assert [frame_number(f) for _, f in read_frames(path, range(6))] == list(range(6))


def test_iter_frames_yields_each_requested_frame_once_in_order(tmp_path):
    path = write_video(tmp_path / "v.mp4", [flat(32, 32, t) for t in range(8)])
    got = [(i, frame_number(f.to_rgb())) for i, f in iter_frames(path, [5, 1, 5, 3])]
    assert got == [(1, 1), (3, 3), (5, 5)]


def test_resolution_change_is_scaled_to_the_first_size(tmp_path):
    first = write_video(tmp_path / "a.h264", [flat(48, 64, 0)] * 2)
    second = write_video(tmp_path / "b.h264", [flat(32, 32, 5)] * 2)
    joined = tmp_path / "joined.h264"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    frames = dict(read_frames(joined, range(4)))
    assert {f.shape for f in frames.values()} == {(48, 64, 3)}
    assert abs(frames[3].mean() - 110) < 2


def test_rotation_is_reported_and_applied_on_request(tmp_path):
    source = pattern(48, 64)
    path = write_video(tmp_path / "rot.mp4", [source] * 2, rotation=90)
    assert probe(path).rotation == 90
    (_, plain), = read_frames(path, [0])
    (_, turned), = read_frames(path, [0], rotate=True)
    assert plain.shape == (48, 64, 3)
    np.testing.assert_array_equal(turned, np.rot90(plain))
    views, _ = load_views(path, SMALL, rotate=True)
    assert views["technical"].shape[-2:] == (64, 64)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("suffix,max_err", [(".png", 0), (".bmp", 0), (".jpg", 6), (".webp", 12)])
def test_images_are_one_frame_inputs(tmp_path, suffix, max_err):
    if suffix == ".webp" and not has_encoder("libwebp"):
        pytest.skip("no libwebp encoder")
    source = pattern(30, 40)
    path = write_image(tmp_path / f"img{suffix}", source)
    info = probe(path)
    assert info.is_image and info.num_frames == 1 and (info.width, info.height) == (40, 30)
    assert colour_error(path, [source])[0] <= max_err
    views, _ = load_views(path, OFFICIAL_VIEWS)
    assert {k: v.shape for k, v in views.items()} == {
        "semantic": (1, 3, 1, 512, 512), "technical": (1, 3, 1, 224, 224),
        "aesthetic": (1, 3, 1, 224, 224)}


@pytest.mark.parametrize("pix_fmt", ["gray", "rgba", "rgb48be"])
def test_non_yuv_images_convert_exactly(tmp_path, pix_fmt):
    source = pattern(30, 40)
    if pix_fmt == "gray":
        source = np.repeat(source[..., 1:2], 3, axis=2)
    path = write_image(tmp_path / "img.png", source, pix_fmt=pix_fmt)
    info = probe(path)
    assert info.pix_fmt == pix_fmt and info.matrix == "rgb"
    assert colour_error(path, [source])[0] == 0


@pytest.mark.parametrize("height,width", [(1, 1), (16, 16), (20, 700)])
def test_tiny_frames_give_well_defined_views(tmp_path, height, width):
    source = pattern(height, width)
    path = write_image(tmp_path / "tiny.png", source)
    views, _ = load_views(path, OFFICIAL_VIEWS)
    tech = views["technical"][0]
    assert tech.shape == (3, 1, 224, 224) and np.isfinite(tech).all()
    if height == width == 1:  # one pixel, upsampled: every fragment is that colour (+- 1)
        level = normalise(source.transpose(2, 0, 1)[:, None].astype(np.uint8),
                          OFFICIAL_VIEWS["technical"])
        assert np.abs(tech - level).max() <= 1.01 / min(OFFICIAL_VIEWS["technical"].std)
    video = write_video(tmp_path / "tiny16.mp4", [pattern(16, 16, t) for t in range(3)])
    assert load_views(video, SMALL)[0]["technical"].shape == (1, 3, 8, 64, 64)


def test_huge_frame(tmp_path):
    source = np.zeros((2304, 4096, 3), np.uint8)
    source[:, 2048:] = (200, 100, 50)
    path = write_image(tmp_path / "huge.png", source)
    views, info = load_views(path, OFFICIAL_VIEWS)
    assert (info.width, info.height) == (4096, 2304)
    right = normalise(np.array((200, 100, 50), np.uint8).reshape(3, 1, 1, 1),
                      OFFICIAL_VIEWS["aesthetic"])[:, 0, 0, 0]
    np.testing.assert_allclose(views["aesthetic"][0, :, 0, :, -1], right[:, None].repeat(224, 1),
                               atol=1e-6)


# ----------------------------------------------------------------------------- lazy = eager


def test_load_views_equals_build_views_on_rgb_frames(tmp_path):
    if not has_encoder("libvpx-vp9"):
        pytest.skip("no libvpx-vp9 encoder")
    path = write_video(tmp_path / "odd.webm", [pattern(45, 71, t) for t in range(20)],
                       codec="libvpx-vp9")
    info = probe(path)
    frames = dict(read_frames(path, range(info.num_frames)))
    for seed, clips in ((None, 1), (7, 3)):
        views, _ = load_views(path, SMALL, seed=seed, clips=clips)
        for k in range(clips):
            rng = None if seed is None else np.random.default_rng((seed, k))
            eager = build_views(frames, info.num_frames, SMALL, rng=rng, clip=k, clips=clips)
            for name, spec in SMALL.items():
                np.testing.assert_array_equal(views[name][k], normalise(eager[name], spec))
    a, _ = load_views(path, SMALL, clips=2)
    assert not np.array_equal(a["semantic"][0], a["semantic"][1])  # clips differ


# ----------------------------------------------------------------------------- colour maths


@pytest.mark.parametrize("matrix", sorted(MATRICES))
@pytest.mark.parametrize("full,bits", [(False, 8), (True, 8), (False, 10), (True, 10)])
def test_yuv_extremes_map_to_black_grey_white(matrix, full, bits):
    conv = yuv_to_rgb_coefficients(matrix, full, bits)
    top = (1 << bits) - 1
    black, white = (0, top) if full else (16 << (bits - 8), 235 << (bits - 8))
    mid = 1 << (bits - 1)
    y = np.array([[black, white, (black + white) // 2]], np.uint16)
    chroma = np.full((1, 3), mid, np.uint16)
    rgb = yuv_to_rgb(y, chroma, chroma, conv)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    assert abs(int(rgb[0, 2, 0]) - 128) <= 1 and len(set(rgb[0, 2].tolist())) == 1


def test_yuv_red_and_subsampled_chroma():
    conv = yuv_to_rgb_coefficients("bt709", False, 8)
    # BT.709 limited-range pure red: Y 63, Cb 102, Cr 240
    y = np.full((3, 5), 63, np.uint8)
    u = np.full((2, 3), 102, np.uint8)
    v = np.full((2, 3), 240, np.uint8)
    v[1, 2] = 128  # affects only luma rows 2.., columns 4..
    rgb = yuv_to_rgb(y, u, v, conv)
    assert np.abs(rgb[0, 0].astype(int) - (255, 0, 0)).max() <= 1
    assert rgb[2, 4, 0] < 100 and rgb[2, 3, 0] > 250 and rgb[1, 4, 0] > 250
    part = yuv_to_rgb(y, u, v, conv, rows=np.array([0, 2]), cols=np.array([1, 4]))
    np.testing.assert_array_equal(part, rgb[np.ix_([0, 2], [1, 4])])


def test_exact_conversion_is_within_three_levels_of_swscale(tmp_path):
    sources = [pattern(48, 64, t) for t in range(2)]
    path = write_video(tmp_path / "v.mp4", sources, colorspace=1)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        ours = Frame.from_av(frame).to_rgb()
        theirs = frame.reformat(format="rgb24", src_colorspace="ITU709",
                                src_color_range="MPEG").to_ndarray()
    assert np.abs(ours.astype(int) - theirs).max() <= 3


# ----------------------------------------------------------------------------- bad input


def one_line_error(path, call=probe, *args):
    with pytest.raises(InputError) as info:
        call(path, *args)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def noisy_mp4(path, frames=12):
    """An MP4 with its index first (faststart) and big frames, so truncating it keeps a header."""
    raw = write_video(path.with_suffix(".raw.mp4"),
                      [flat(64, 64, t, noise=8) for t in range(frames)])
    with av.open(str(raw)) as src, \
            av.open(str(path), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path


def test_missing_empty_text_directory_and_audio_only(tmp_path):
    assert "no such file" in one_line_error(tmp_path / "gone.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in one_line_error(tmp_path / "empty.mp4")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    assert "FFmpeg" in one_line_error(tmp_path / "notes.mp4")
    assert "directory" in one_line_error(tmp_path)
    assert "audio only" in one_line_error(write_audio(tmp_path / "a.wav"))
    assert "no such file" in one_line_error(tmp_path / "gone.mp4", load_views, OFFICIAL_VIEWS)


def test_unsupported_codec(tmp_path):
    path = write_video(tmp_path / "m.mkv", [flat(32, 32)] * 2, codec="mpeg4")
    data = path.read_bytes()
    assert b"V_MPEG4/ISO/ASP" in data
    (tmp_path / "x.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_QQQQQ/ISO/ASP"))
    assert "unsupported video codec" in one_line_error(tmp_path / "x.mkv")


def test_truncated_files(tmp_path):
    path = noisy_mp4(tmp_path / "v.mp4")
    data = path.read_bytes()
    (tmp_path / "head.mp4").write_bytes(data[:200])  # not even the index
    one_line_error(tmp_path / "head.mp4")
    with av.open(str(path)) as container:
        first = next(p for p in container.demux(video=0) if p.size)
    (tmp_path / "nothing.mp4").write_bytes(data[:first.pos + 16])  # index, no whole frame
    assert "no decodable video frames" in one_line_error(tmp_path / "nothing.mp4")

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    info = probe(cut)
    assert info.num_frames == 12  # the header still claims all of them
    assert [i for i, _ in read_frames(cut, [0, 1])] == [0, 1]  # stops before the damage
    with pytest.raises(ShortVideoError) as short:
        list(read_frames(cut, range(12)))
    decoded = short.value.decoded
    assert 0 < decoded < 12
    views, fixed = load_views(cut, SMALL)  # samples again from what decodes
    assert fixed.num_frames == decoded and fixed.counted
    assert views["technical"].shape == (1, 3, 8, 64, 64)


def test_corrupt_middle_gives_views_or_a_clear_error(tmp_path):
    path = noisy_mp4(tmp_path / "v.mp4")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 400] = np.random.default_rng(0).integers(0, 256, 400, np.uint8).tobytes()
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    try:
        views, info = load_views(tmp_path / "bad.mp4", SMALL)
    except InputError as exc:
        assert str(tmp_path / "bad.mp4") in str(exc)
    else:
        assert all(np.isfinite(v).all() for v in views.values()) and info.num_frames >= 1
