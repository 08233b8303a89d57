"""--segments: window planning (pure), frame times (CFR, VFR), one-pass scoring, flat memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cover_engine.runtime import timeline
from cover_engine.runtime.constants import OFFICIAL_VIEWS, views_for_inputs
from cover_engine.runtime.media import decode
from cover_engine.runtime.media.decode import probe
from cover_engine.runtime.media.timestamps import frame_times
from cover_engine.runtime.views.sampling import frame_indices
from cover_engine.runtime.views.segments import (FrameTimes, Window, as_fraction, plan_windows,
                                                 uniform_times, window_of_frames, window_plans)

from helpers import SAMPLE
from helpers.media import flat, noisy_mp4, write_video
#: Small views (the reference vectors' sizes): semantic 4 frames, technical/aesthetic 8.
SMALL = views_for_inputs({"semantic": (1, 3, 4, 112, 112), "technical": (1, 3, 8, 224, 224),
                          "aesthetic": (1, 3, 8, 224, 224)})


def spans(windows):
    return [(w.first, w.stop) for w in windows]


# --------------------------------------------------------------------------- planning (pure)


def test_cfr_windows_cut_on_exact_boundaries():
    times = uniform_times(64, 30)  # 2.1333 s
    windows = plan_windows(times, "0.5")
    assert spans(windows) == [(0, 15), (15, 30), (30, 45), (45, 60), (60, 64)]
    assert [w.start for w in windows] == [Fraction(k, 2) for k in range(5)]
    assert [w.end for w in windows] == [Fraction(1, 2), 1, Fraction(3, 2), 2, Fraction(64, 30)]
    assert not any(w.borrowed for w in windows)


def test_a_frame_on_a_boundary_opens_the_next_window():
    # 29.97 fps: frame 30000 starts at exactly 1001 s; 0.1 s is not a binary fraction.
    times = uniform_times(30001, Fraction(30000, 1001))
    of = window_of_frames(times, 1001)
    assert of[29999] == 0 and of[30000] == 1
    times = uniform_times(31, 10)
    assert list(window_of_frames(times, 0.1)[:4]) == [0, 1, 2, 3]  # float 0.1 would misplace
    assert spans(plan_windows(times, 0.3))[:3] == [(0, 3), (3, 6), (6, 9)]


def test_window_longer_than_the_video_is_the_whole_video():
    times = uniform_times(64, 30)
    (only,) = plan_windows(times, 1000)
    assert (only.first, only.stop, only.start, only.end) == (0, 64, 0, Fraction(64, 30))


def test_vfr_windows_follow_time_and_borrow_across_a_long_still():
    # ms stamps: 10 fps, then one frame held 2.5 s, then 20 fps
    pts = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 3500, 3550, 3600, 3650]
    times = FrameTimes(np.array(pts), 3700, Fraction(1, 1000))
    windows = plan_windows(times, 1)
    assert spans(windows) == [(0, 10), (10, 11), (10, 11), (11, 15)]
    assert [w.borrowed for w in windows] == [False, False, True, False]
    assert [(w.start, w.end) for w in windows] == [(0, 1), (1, 2), (2, 3), (3, Fraction(37, 10))]
    # stamps that start late are measured from the first frame
    shifted = FrameTimes(np.array(pts) + 12345, 3700 + 12345, Fraction(1, 1000))
    assert spans(plan_windows(shifted, 1)) == spans(windows)


def test_huge_timestamps_do_not_overflow():
    pts = np.array([0, 2 ** 40, 2 ** 41, 2 ** 41 + 7], np.int64)
    times = FrameTimes(pts, 2 ** 42, Fraction(1, 90000))
    of = window_of_frames(times, Fraction(1, 3))
    exact = [int(Fraction(int(p), 90000) / Fraction(1, 3)) for p in pts]
    assert list(of) == exact


def test_every_frame_is_in_exactly_one_window_unless_borrowed():
    rng = np.random.default_rng(3)
    for _ in range(50):
        pts = np.cumsum(rng.integers(1, 200, rng.integers(1, 300)))
        times = FrameTimes(pts, int(pts[-1]) + int(rng.integers(1, 200)), Fraction(1, 600))
        seconds = Fraction(int(rng.integers(1, 400)), 100)
        windows = plan_windows(times, seconds)
        own = [w for w in windows if not w.borrowed]
        assert [i for w in own for i in range(w.first, w.stop)] == list(range(len(pts)))
        assert windows[0].start == 0 and windows[-1].end == times.duration
        for w in windows:
            assert w.frames >= 1 and w.end - w.start <= seconds
            assert w.end - w.start > 0


def test_bad_window_lengths_and_times_are_refused():
    for bad in (0, -1, "0"):
        with pytest.raises(ValueError):
            as_fraction(bad)
    with pytest.raises(ValueError):
        FrameTimes(np.array([0, 5, 5]), 9, Fraction(1, 25))
    with pytest.raises(ValueError):
        FrameTimes(np.array([0, 5]), 5, Fraction(1, 25))


def test_window_plans_sample_a_window_as_a_short_video():
    window = Window(4, Fraction(2), Fraction(3), first=100, stop=103)  # 3 frames
    plans = window_plans(window, 270, 480, OFFICIAL_VIEWS)
    for name, spec in OFFICIAL_VIEWS.items():
        np.testing.assert_array_equal(plans[name].indices, frame_indices(3, spec) + 100)
    technical = plans["technical"].indices  # 40 view frames from 3: repeated, as upstream
    assert len(technical) == 40 and set(technical.tolist()) <= {100, 101, 102}


# --------------------------------------------------------------------------- frame times


def flat_video(path, n, *, rate=10, pts=None, time_base=None):
    """Grey frames whose level is 10 + 3 t (frame identity survives the codec)."""
    frames = [np.full((48, 64, 3), 10 + 3 * t, np.uint8) for t in range(n)]
    return write_video(path, frames, rate=rate, pts=pts, time_base=time_base)


def test_frame_times_of_a_cfr_file(tmp_path):
    path = flat_video(tmp_path / "cfr.mp4", 25, rate=10)
    times = frame_times(path, probe(path))
    assert len(times) == 25 and times.duration == Fraction(5, 2)
    assert spans(plan_windows(times, 1)) == [(0, 10), (10, 20), (20, 25)]
    assert times.source == "timestamps"


def test_frame_times_of_a_vfr_file(tmp_path):
    stamps = [0, 1, 2, 3, 10, 11, 30, 31, 32]  # 1/25 s ticks
    path = flat_video(tmp_path / "vfr.mkv", len(stamps), pts=stamps, time_base=Fraction(1, 25))
    times = frame_times(path, probe(path))
    rel = (times.pts - times.pts[0]) * times.time_base
    assert [Fraction(r) for r in rel] == [Fraction(s, 25) for s in stamps]
    assert spans(plan_windows(times, Fraction(2, 5))) == [(0, 4), (4, 6), (5, 6), (6, 9)]


def test_frame_times_fall_back_to_the_frame_rate(tmp_path, monkeypatch):
    path = flat_video(tmp_path / "cfr.mp4", 12, rate=8)
    monkeypatch.setattr("cover_engine.runtime.media.timestamps.packet_times", lambda p: None)
    times = frame_times(path, probe(path))
    assert times.source == "frame rate" and times.duration == Fraction(12, 8)


# --------------------------------------------------------------------------- scoring windows


class LevelBackend:
    """Each branch's score is the mean grey level (0..255) of its view: a window's scores say
    which frames it was sampled from."""

    name = "level"

    def __init__(self, specs=SMALL):
        self.specs = dict(specs)
        self.batches = []

    def run(self, views):
        out = {}
        for name, view in views.items():
            spec = self.specs[name]
            mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1, 1)
            std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1, 1)
            level = (view * std + mean).mean(axis=(1, 2, 3, 4))
            out[name] = level.reshape(-1, 1, 1, 1, 1).astype(np.float32)
        self.batches.append(len(next(iter(views.values()))))
        return out


def expected_level(window_first, window_frames, spec, levels):
    idx = frame_indices(window_frames, spec) + window_first
    return float(np.mean([levels[i] for i in idx]))


def test_each_window_is_sampled_from_its_own_frames(tmp_path, monkeypatch):
    path = flat_video(tmp_path / "cfr.mp4", 25, rate=10)
    decoded = []
    real = decode._decode_packet
    monkeypatch.setattr(decode, "_decode_packet", lambda p: decoded.append(1) or real(p))
    probe(path)
    probing = len(decoded)  # probe decodes the first frame; then one pass for all windows
    result = timeline.score_segments(LevelBackend(), path, 1)
    levels = [10 + 3 * t for t in range(25)]
    assert [(s["start"], s["end"], s["frames"]) for s in result.segments] == \
        [(0.0, 1.0, 10), (1.0, 2.0, 10), (2.0, 2.5, 5)]
    for seg, (first, n) in zip(result.segments, [(0, 10), (10, 10), (20, 5)]):
        for name in ("semantic", "technical", "aesthetic"):
            assert seg[name] == pytest.approx(expected_level(first, n, SMALL[name], levels),
                                              abs=1.0)
        assert seg["overall"] == pytest.approx(seg["semantic"] + seg["technical"]
                                               + seg["aesthetic"])
    for key in ("semantic", "technical", "aesthetic", "overall"):  # whole video = window mean
        assert getattr(result, key) == pytest.approx(np.mean([s[key] for s in result.segments]))
    assert len(decoded) - 2 * probing <= 25 + 1  # one pass (+ the flush): none decoded twice


def test_vfr_borrowed_window_scores_the_frame_on_screen(tmp_path):
    stamps = [0, 1, 2, 3, 30, 31]  # frame 3 is held from 0.12 s to 1.2 s
    path = flat_video(tmp_path / "vfr.mkv", len(stamps), pts=stamps, time_base=Fraction(1, 25))
    result = timeline.score_segments(LevelBackend(), path, Fraction(2, 5))
    assert [s["frames"] for s in result.segments] == [4, 1, 1, 2]
    assert result.segments[1]["semantic"] == pytest.approx(10 + 3 * 3, abs=1.0)
    assert result.segments[2]["semantic"] == pytest.approx(10 + 3 * 3, abs=1.0)


def test_clips_are_batched_per_window_and_seeds_reproduce(tmp_path):
    path = flat_video(tmp_path / "cfr.mp4", 30, rate=10)
    backend = LevelBackend()
    a = timeline.score_segments(backend, path, 1, clips=3, seed=7)
    assert backend.batches == [3, 3, 3]
    b = timeline.score_segments(backend, path, 1, clips=3, seed=7)
    assert a.segments == b.segments


def test_one_window_over_the_whole_file_is_the_ordinary_score():
    from cover_engine.runtime.scoring import Scorer

    backend = LevelBackend()
    whole = Scorer(backend).score(SAMPLE)
    result = timeline.score_segments(backend, SAMPLE, 60)
    assert len(result.segments) == 1
    for key in ("semantic", "technical", "aesthetic", "overall"):
        assert getattr(result, key) == getattr(whole, key)


def test_an_image_has_no_windows(tmp_path):
    from helpers.media import write_image

    image = write_image(tmp_path / "a.png", np.full((40, 50, 3), 90, np.uint8))
    result = timeline.score_segments(LevelBackend(), image, 1)
    assert result.segments == [] and result.semantic == pytest.approx(90, abs=1)




def test_a_truncated_file_is_cut_on_the_frames_that_decode(tmp_path):
    data = noisy_mp4(tmp_path / "v.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    assert probe(cut).num_frames == 12  # the header still claims every frame
    result = timeline.score_segments(LevelBackend(), cut, Fraction(4, 25))  # 4 frames each
    decoded = result.frames
    assert 0 < decoded < 12
    assert sum(s["frames"] for s in result.segments) == decoded
    assert result.segments[-1]["end"] == pytest.approx(decoded / 25)


def test_segment_rows_are_exact():
    from cover_engine.runtime.results import FileScore

    seg = {"start": 0.0, "end": 1.5, "frames": 3, "semantic": 0.1, "technical": -1 / 3,
           "aesthetic": 2.0, "overall": 0.1 - 1 / 3 + 2.0, "mos": 3.25}
    score = FileScore("a.mp4", 0, 0, 0, 0, 3, "2x2", "x", 0.0, segments=[seg])
    (row,) = timeline.segment_rows(score)
    assert float(row["technical"]) == -1 / 3 and row["mos"] == "3.25" and row["segment"] == "0"


# --------------------------------------------------------------------------- flat memory

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from dataclasses import replace
    import numpy as np
    from cover_engine.runtime.constants import OFFICIAL_VIEWS
    from cover_engine.runtime.timeline import score_segments

    class Zero:
        # the official view sizes, a fifth of the frames (to stay fast); scores all 0
        name = "zero"
        specs = {k: replace(v, clip_len=v.clip_len // 5, t_frag=v.t_frag // 5,
                            aligned=v.aligned // 5) for k, v in OFFICIAL_VIEWS.items()}
        def run(self, views):
            return {k: np.zeros((len(v), 1, 1, 1, 1), np.float32) for k, v in views.items()}

    result = score_segments(Zero(), sys.argv[1], 1)
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(json.dumps({"windows": len(result.segments), "peak_kib": int(peak)}))
""")


def long_4k(path: Path, seconds: int) -> Path:
    """A 4K H.264 file of ``seconds`` seconds at 30 fps: one closed 1-second group of pictures
    encoded once, its packets repeated with shifted timestamps (a long file in a few seconds)."""
    unit = path.with_name("unit.mp4")
    if not unit.exists():
        width, height = 3840, 2160
        with av.open(str(unit), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "ultrafast", "crf": "40",
                              "x264-params": "keyint=30:min-keyint=30:scenecut=0:bframes=0"}
            for t in range(30):
                frame = av.VideoFrame(width, height, "yuv420p")
                luma = np.full((height, width), 16 + 6 * t, np.uint8)
                luma[:, 100 * t:100 * t + 300] = 235
                for i, plane in enumerate(frame.planes):
                    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                    rows[:, :plane.width] = luma if i == 0 else 128
                frame.pts = t
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    with av.open(str(unit)) as source, av.open(str(path), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        packets = [p for p in source.demux(video=0) if p.size]
        step = packets[1].pts - packets[0].pts
        for k in range(seconds):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.pts, copy.dts = p.pts + 30 * k * step, p.dts + 30 * k * step
                copy.duration, copy.time_base = p.duration, p.time_base
                copy.is_keyframe = p.is_keyframe
                copy.stream = stream
                target.mux(copy)
    return path


def peak_memory(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(path)], check=True,
                         capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_stays_flat_on_a_long_4k_file(tmp_path):
    """Peak resident memory (VmHWM, in a fresh process each) of 2 s and 10 s of 4K in 1 s
    windows, views of the official sizes: five times the windows, the same peak. Keeping the
    decoded frames (12 MB each, 30 per second) or the windows' views (5.5 MB each as uint8,
    22 MB normalised) would add hundreds of MiB; measured: the same peak within 1 MiB."""
    short = peak_memory(long_4k(tmp_path / "short.mp4", 2))
    long = peak_memory(long_4k(tmp_path / "long.mp4", 10))
    assert (short["windows"], long["windows"]) == (2, 10)
    grown = (long["peak_kib"] - short["peak_kib"]) / 1024
    assert grown < 40, f"peak grew by {grown:.0f} MiB from 2 to 10 windows of 4K"
