"""Decoding: counts, colour, formats and every kind of bad input, on media the tests write."""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest

from cover_engine.runtime.media import decode
from cover_engine.runtime.views import assemble as views_module
from cover_engine.runtime.media.colour import MATRICES, yuv_to_rgb, yuv_to_rgb_coefficients
from cover_engine.runtime.constants import OFFICIAL_VIEWS
from cover_engine.runtime.media.decode import (Frame, ShortVideoError, frame_index, iter_frames, probe,
                                         read_frames, seek_plan)
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.views.assemble import build_views, load_views, normalise

from helpers.media import (drop_by_edit_list, flat, noisy_mp4, frame_number, has_encoder, pattern, remux, textured, write_audio,
                   write_image, write_video)

SMALL = {"semantic": replace(OFFICIAL_VIEWS["semantic"], clip_len=4, t_frag=4, size_h=28,
                             size_w=28),
         "technical": replace(OFFICIAL_VIEWS["technical"], clip_len=8, t_frag=4, aligned=8,
                              fragments_h=2, fragments_w=2),
         "aesthetic": replace(OFFICIAL_VIEWS["aesthetic"], clip_len=8, t_frag=4, size_h=32,
                              size_w=32)}


def colour_error(path, sources, colour="exact"):
    """Worst and mean error against the pictures encoded (the exact maths: decord's conversion
    is checked against decord itself, in test_decord_parity.py)."""
    frames = dict(read_frames(path, range(len(sources)), colour=colour))
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


def test_rotation_is_applied_as_decord_does_and_on_request(tmp_path):
    source = pattern(48, 64)
    path = write_video(tmp_path / "rot.mp4", [source] * 2, rotation=90)
    assert probe(path).rotation == 90
    (_, plain), = read_frames(path, [0], rotate=False)
    (_, turned), = read_frames(path, [0])  # decord (the default) turns the frame
    (_, exact), = read_frames(path, [0], colour="exact")  # today's exact mode does not
    (_, exact_turned), = read_frames(path, [0], colour="exact", rotate=True)
    assert plain.shape == exact.shape == (48, 64, 3)
    np.testing.assert_array_equal(turned, np.rot90(plain))
    np.testing.assert_array_equal(exact_turned, np.rot90(exact))
    views, info = load_views(path, SMALL)
    assert (info.width, info.height) == (64, 48)  # info stays the decoded size
    eager = build_views(dict(read_frames(path, range(2))), 2, SMALL)  # views of turned frames
    for name, spec in SMALL.items():
        np.testing.assert_array_equal(views[name][0], normalise(eager[name], spec))
    unturned, _ = load_views(path, SMALL, rotate=False)
    assert not np.array_equal(unturned["aesthetic"], views["aesthetic"])


# ----------------------------------------------------------------------------- seeking

GOP_10 = "keyint=10:min-keyint=10:scenecut=0:b-adapt=0"  # x264: exactly that, B-frames kept
SEEKABLE = [  # (file, encoder, options, VFR): short GOPs, B-frames where the codec has them
    ("h264.mp4", "libx264", {"qp": "20", "x264-params": f"{GOP_10}:bframes=3"}, False),
    ("h264_open_gop.mkv", "libx264", {"qp": "20", "x264-params": f"{GOP_10}:bframes=3:open-gop=1"},
     False),
    ("hevc.mkv", "libx265", {"x265-params": "keyint=10:min-keyint=10:bframes=3:log-level=none"},
     False),
    ("vp9.webm", "libvpx-vp9", {"g": "10", "lag-in-frames": "16", "auto-alt-ref": "1"}, False),
    ("mpeg4.mp4", "mpeg4", {"g": "10", "bf": "2", "qscale": "4"}, False),
    ("mpeg4.avi", "mpeg4", {"g": "3", "bf": "2", "qscale": "4"}, False),  # indexed by dts
    ("vfr.mp4", "libx264", {"qp": "20", "x264-params": f"{GOP_10}:bframes=2"}, True),
    ("vfr.mkv", "libx264", {"qp": "20", "x264-params": f"{GOP_10}:bframes=2"}, True),
]
FRAMES = 150


@pytest.fixture
def decode_count(monkeypatch):
    """Counts packets decoded and seeks made, by every path."""
    counts = {"packets": 0, "seeks": 0}
    decode_packet, seek = decode._decode_packet, decode._seek

    def counted_decode(packet):
        counts["packets"] += 1
        return decode_packet(packet)

    def counted_seek(*args):
        counts["seeks"] += 1
        return seek(*args)

    monkeypatch.setattr(decode, "_decode_packet", counted_decode)
    monkeypatch.setattr(decode, "_seek", counted_seek)
    return counts


def decoded(path, indices, counts, seek=True):
    """The frames ``read_frames`` gives, and how many packets and seeks they took."""
    counts.update(packets=0, seeks=0)
    frames = [(i, rgb.copy()) for i, rgb in read_frames(path, indices, seek=seek)]
    return frames, dict(counts)


def assert_same_frames(got, want):
    assert [i for i, _ in got] == [i for i, _ in want]
    for (i, a), (_, b) in zip(got, want):
        assert np.array_equal(a, b), f"frame {i} differs"


def seekable_video(tmp_path, name, codec, options, vfr):
    """A SEEKABLE video, 48x64 (smaller frames make this build's libx265 corrupt its heap)."""
    if not has_encoder(codec):
        pytest.skip(f"no {codec} encoder in this FFmpeg")
    stamps = np.cumsum(np.random.default_rng(1).integers(1, 4, FRAMES)).tolist() if vfr else None
    return write_video(tmp_path / name, [textured(48, 64, t) for t in range(FRAMES)],
                       codec=codec, options=options, pts=stamps,
                       time_base=Fraction(1, 25) if vfr else None)


@pytest.mark.parametrize("name,codec,options,vfr", SEEKABLE)
def test_seeking_gives_the_frames_of_the_sequential_path(tmp_path, decode_count, name, codec,
                                                        options, vfr):
    path = seekable_video(tmp_path, name, codec, options, vfr)
    index = frame_index(path)
    assert index is not None and len(index) == probe(path).num_frames == FRAMES
    assert np.all(np.diff(index.pts) > 0) and index.keyframe[0]
    assert np.diff(np.flatnonzero(index.keyframe)).max() <= 12  # the short GOP asked for
    every, _ = decoded(path, range(FRAMES), decode_count, seek=False)
    assert len({rgb.tobytes() for _, rgb in every}) > 0.9 * FRAMES  # a wrong frame would show
    scattered = np.random.default_rng(0).choice(FRAMES, 12, replace=False).tolist()
    for indices in ([0, FRAMES - 1], [FRAMES - 1], [3, 40, 40, 41, 42, 97, 98, 149, 3],
                    scattered, range(0, FRAMES, 23)):
        got, seeking = decoded(path, indices, decode_count)
        want, sequential = decoded(path, indices, decode_count, seek=False)
        assert_same_frames(got, want)
        assert_same_frames(got, [every[i] for i in sorted(set(indices))])
        assert seeking["seeks"] > 0 and seeking["packets"] < sequential["packets"], indices
        assert sequential["seeks"] == 0


def test_seeks_land_on_their_keyframe_by_pts_or_else_by_dts(tmp_path):
    avi = seekable_video(tmp_path, "v.avi", *SEEKABLE[5][1:])  # AVI indexes by decoding time
    mp4 = seekable_video(tmp_path, "v.mp4", *SEEKABLE[0][1:])
    for path, stamps in ((avi, {"pts", "dts"}), (mp4, {"pts"})):
        index = frame_index(path)
        keys = np.flatnonzero(index.keyframe)
        with decode._open(path) as (container, stream):
            landings = [decode._landing(container, stream, index, int(key)) for key in keys]
        assert [start for _, start in landings] == keys.tolist()
        assert {"pts" if stamp == index.pts[key] else "dts"
                for (stamp, _), key in zip(landings, keys)} == stamps
        assert not np.array_equal(index.pts[keys], index.dts[keys])


def test_load_views_seeks_and_gives_the_same_views(tmp_path, decode_count, monkeypatch):
    path = seekable_video(tmp_path, "v.mp4", *SEEKABLE[0][1:])
    seeking, _ = load_views(path, SMALL, clips=2)
    packets = decode_count["packets"]
    monkeypatch.setattr(views_module, "iter_frames",
                        lambda *args, **kwargs: iter_frames(*args, **{**kwargs, "seek": False}))
    decode_count["packets"] = 0
    sequential, _ = load_views(path, SMALL, clips=2)
    assert packets < decode_count["packets"]
    for name in SMALL:
        np.testing.assert_array_equal(seeking[name], sequential[name])


def test_seek_plan_seeks_only_where_it_skips_enough():
    def exact(key):  # every seek lands on its keyframe
        return key

    def coarse(key):  # a coarse container index lands one keyframe early
        return key - 10

    def plan(wanted, land=exact, min_skip=8):
        return seek_plan(np.arange(0, 100, 10), wanted, land, min_skip)

    assert plan([3, 4, 25, 26, 27, 58, 99]) == [None, None, 20, None, None, 50, 90]
    assert plan([12]) == [10] and plan([9]) == [None]
    assert plan([2, 13]) == [None, None]  # keyframe 10 is 7 frames past where decoding is
    assert plan([1, 13]) == [None, 10]    # ... and 8 frames here
    assert plan([5, 14, 30], min_skip=20) == [None, None, None]
    assert plan([3, 25, 58], coarse) == [None, None, 50]
    tried = []  # a seek that misses is not planned, and no later seek is tried
    assert plan([25, 58, 99], tried.append) == [None] * 3 and tried == [20]


def test_no_timestamps_means_sequential_decoding(tmp_path, decode_count):
    frames = [textured(32, 48, t) for t in range(60)]
    raw = write_video(tmp_path / "v.h264", frames, options={"g": "10", "bf": "2", "qp": "20"})
    with av.open(str(raw)) as container:
        assert any(p.pts is None for p in container.demux(video=0) if p.size)
    assert frame_index(raw) is None
    got, seeking = decoded(raw, [0, 30, 59], decode_count)
    want, sequential = decoded(raw, [0, 30, 59], decode_count, seek=False)
    assert_same_frames(got, want)
    assert seeking == sequential and seeking["seeks"] == 0


def test_duplicate_timestamps_mean_sequential_decoding(tmp_path, decode_count):
    source = write_video(tmp_path / "v.mp4", [flat(32, 32, t % 12) for t in range(60)],
                         options={"g": "10", "bf": "0", "qp": "0"})

    def restamp(packets):  # Matroska takes equal timestamps: frame 31 gets frame 30's
        for i, packet in enumerate(packets):
            packet.pts = packet.dts = i - (i == 31)
        return packets

    dup = remux(source, tmp_path / "dup.mkv", restamp)
    assert frame_index(dup) is None
    got, seeking = decoded(dup, [0, 31, 45, 59], decode_count)
    want, sequential = decoded(dup, [0, 31, 45, 59], decode_count, seek=False)
    assert_same_frames(got, want)
    assert [frame_number(f) for _, f in got] == [0, 31 % 12, 45 % 12, 59 % 12]
    assert seeking == sequential


@pytest.mark.parametrize("codec,options", [SEEKABLE[1][1:3], SEEKABLE[2][1:3]])
def test_a_file_cut_after_an_open_keyframe_means_sequential_decoding(tmp_path, decode_count,
                                                                     codec, options):
    """Cut at a keyframe whose leading pictures need the frames cut off: the decoder drops
    them, so frame 0 is the keyframe, not the first timestamp."""
    source = seekable_video(tmp_path, "v.mkv", codec, options, False)
    cut = remux(source, tmp_path / "cut.mkv",
                lambda packets: packets[[p.is_keyframe for p in packets].index(True, 1):])
    with av.open(str(cut)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert packets[0].is_keyframe and min(p.pts for p in packets) < packets[0].pts
    assert frame_index(cut) is None
    indices = [0, 30, 31, 80, 120]
    got, seeking = decoded(cut, indices, decode_count)
    want, sequential = decoded(cut, indices, decode_count, seek=False)
    assert_same_frames(got, want)
    assert seeking == sequential


def test_a_seek_that_lands_wrong_hands_over_to_the_sequential_path(tmp_path, decode_count,
                                                                   monkeypatch):
    path = seekable_video(tmp_path, "v.mp4", *SEEKABLE[0][1:])
    landing = decode._landing

    def late(container, stream, index, key):  # the plan trusts it, decoding finds it wrong
        stamp, start = landing(container, stream, index, key)
        keys = np.flatnonzero(index.keyframe)
        return (stamp, start) if key < 60 else (int(index.pts[keys[-1]]), start)

    monkeypatch.setattr(decode, "_landing", late)
    indices = [5, 50, 51, 100, 149]
    got, seeking = decoded(path, indices, decode_count)
    want, sequential = decoded(path, indices, decode_count, seek=False)
    assert_same_frames(got, want)
    assert seeking["packets"] > sequential["packets"]  # both paths decoded: it did hand over


def test_a_frame_out_of_turn_hands_over_to_the_sequential_path(tmp_path, decode_count,
                                                               monkeypatch):
    path = seekable_video(tmp_path, "v.mp4", *SEEKABLE[0][1:])
    index = frame_index(path)
    key = int(np.flatnonzero(index.keyframe)[5])
    decode_packet = decode._decode_packet  # the fixture's counting wrapper

    def dropping(packet):  # a decoder that silently loses the picture 2 frames past `key`
        return [f for f in decode_packet(packet) if f.pts != index.pts[key + 2]]

    monkeypatch.setattr(decode, "_decode_packet", dropping)
    indices = [0, key + 5]
    got, seeking = decoded(path, indices, decode_count)
    want, sequential = decoded(path, indices, decode_count, seek=False)
    assert_same_frames(got, want)  # as the sequential path counts: key + 5 is key + 6's picture
    assert seeking["packets"] > sequential["packets"]


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
        ours = Frame.from_av(frame, "exact").to_rgb()
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


def test_frames_an_edit_list_drops_repeat_the_frame_read_before_them_as_decord_does(tmp_path):
    # 20 frames: a length whose samples include the last frame (so do 3, 21, 22, 41, 60, ...)
    clip = write_video(tmp_path / "full.mp4", [textured(96, 128, t) for t in range(20)],
                       options={"bf": "2", "crf": "20"}, rate=30)
    cut = drop_by_edit_list(clip, tmp_path / "cut.mp4", frames=2, rate=30)
    with av.open(str(cut)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 18
    info = probe(cut)
    assert info.num_frames == 20 and not info.counted  # decord's count: every packet
    full = dict(read_frames(cut, range(18)))
    got = dict(read_frames(cut, [3, 12, 18, 19]))      # 18 and 19 fall on dropped packets
    assert np.array_equal(got[12], full[12])
    assert np.array_equal(got[18], full[12]) and np.array_equal(got[19], full[12])
    with pytest.raises(ShortVideoError):   # read first: decord's answer is not modelled
        list(read_frames(cut, [19]))
    with pytest.raises(ShortVideoError):   # the exact mode reads what the file shows
        list(read_frames(cut, [3, 19], colour="exact"))
    views, sampled = load_views(cut, dict(OFFICIAL_VIEWS))  # its samples reach frame 19...
    assert sampled.num_frames == 20 and not sampled.counted  # ...and are not drawn again
    assert all(np.isfinite(v).all() for v in views.values())


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


def test_decoder_threads_change_the_threads_not_the_frames(tmp_path, monkeypatch):
    path = write_video(tmp_path / "t.mp4", [textured(96, 64, t) for t in range(24)])
    wanted = range(0, 24, 5)
    default = [f.to_rgb() for _, f in iter_frames(path, wanted)]
    seen = []
    real_open = decode._open

    def spying_open(p):
        with real_open(p) as (container, stream):
            seen.append(stream.thread_count)
            yield container, stream
    monkeypatch.setattr(decode, "_open", decode.contextmanager(spying_open))
    monkeypatch.setattr(decode, "_decoder_threads", None)  # restored after the test
    decode.set_decoder_threads(1)
    one = [f.to_rgb() for _, f in iter_frames(path, wanted)]
    assert seen and set(seen) == {1}
    assert len(one) == len(default) and all(np.array_equal(a, b) for a, b in zip(one, default))
    with pytest.raises(ValueError):
        decode.set_decoder_threads(0)
