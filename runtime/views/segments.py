"""Consecutive time windows of a video (``cover-run --segments``), each sampled as one COVER clip.

Pure index arithmetic on presentation timestamps, exact in rationals, so a frame that starts
exactly on a window boundary always opens the next window (no float rounding), and a
variable-frame-rate file is cut by time, not by frame count:

* window ``k`` covers ``[k * S, (k + 1) * S)`` seconds after the first frame (the last one ends
  with the video), and holds the frames whose presentation time falls in it;
* a window no frame starts in (a VFR still longer than ``S``) takes the frame on screen at its
  start: one frame, which COVER's sampling repeats, as it does for any short video;
* within a window, frames are numbered from 0 and sampled with the ordinary clip rules
  (:func:`~cover_engine.runtime.views.sampling.frame_indices`), indices wrapping modulo the
  window's frame count, so a window shorter than a clip repeats frames exactly as upstream
  does for a short video. The plan's indices are then shifted to the file's frame numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Mapping, Optional, Union

import numpy as np

from cover_engine.runtime.constants import ViewSpec
from cover_engine.runtime.views.assemble import ViewPlan, plan_views

__all__ = ["FrameTimes", "Window", "as_fraction", "uniform_times", "window_of_frames",
           "plan_windows", "window_plans"]

Seconds = Union[int, float, str, Fraction]


@dataclass(frozen=True)
class FrameTimes:
    """When each frame of a video is shown: ``pts[i] * time_base`` seconds (frame ``i`` in
    presentation order, as the decoder numbers them), and when the last one stops."""

    pts: np.ndarray          # int64 (N,), strictly increasing
    end: int                 # end of the last frame, same units (> pts[-1])
    time_base: Fraction
    source: str = "timestamps"  # or "frame rate": CFR times made up from the frame rate

    def __post_init__(self) -> None:
        pts = np.asarray(self.pts, np.int64)
        if pts.ndim != 1 or not len(pts):
            raise ValueError("frame times need at least one frame")
        if np.any(np.diff(pts) <= 0):
            raise ValueError("frame timestamps must be strictly increasing")
        if self.end <= pts[-1]:
            raise ValueError("the video must end after its last frame starts")
        if self.time_base <= 0:
            raise ValueError("time base must be positive")
        object.__setattr__(self, "pts", pts)

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def duration(self) -> Fraction:
        """Seconds from the first frame's start to the last frame's end."""
        return (self.end - int(self.pts[0])) * self.time_base

    def head(self, n: int) -> "FrameTimes":
        """The first ``n`` frames (a file that decodes fewer frames than it has packets)."""
        if not 1 <= n <= len(self):
            raise ValueError(f"cannot keep {n} of {len(self)} frames")
        end = self.end if n == len(self) else int(self.pts[n])
        return replace(self, pts=self.pts[:n], end=end)


def as_fraction(seconds: Seconds) -> Fraction:
    """``seconds`` as an exact positive rational (``2.5`` is 5/2, not the nearest binary float)."""
    value = seconds if isinstance(seconds, Fraction) else Fraction(str(seconds))
    if value <= 0:
        raise ValueError(f"window length must be positive, got {seconds}")
    return value


def uniform_times(num_frames: int, fps: Seconds) -> FrameTimes:
    """Constant-frame-rate times, frame ``i`` at ``i / fps`` (files without usable timestamps)."""
    rate = as_fraction(fps).limit_denominator(1_000_000)
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    return FrameTimes(np.arange(num_frames, dtype=np.int64), num_frames, 1 / rate, "frame rate")


def _floor_div(num: np.ndarray, den: int) -> np.ndarray:
    """``num // den`` for non-negative integers, exact even beyond int64 (object arithmetic)."""
    return np.array([int(v) // den for v in num], np.int64) if num.dtype == object else num // den


def window_of_frames(times: FrameTimes, seconds: Seconds) -> np.ndarray:
    """The window (``int64``) each frame starts in: ``floor((pts - pts[0]) * time_base / S)``."""
    window = as_fraction(seconds)
    scale = times.time_base / window  # window index per pts tick, exact
    rel = times.pts - times.pts[0]
    num, den = scale.numerator, scale.denominator
    if int(rel[-1]) * num >= 2 ** 62:  # products would overflow int64: exact Python integers
        rel = rel.astype(object)
    return _floor_div(rel * num, den)


@dataclass(frozen=True)
class Window:
    """One window: its time span in seconds after the first frame, and its frames
    ``first .. stop - 1`` (file numbering, presentation order)."""

    index: int
    start: Fraction
    end: Fraction
    first: int
    stop: int

    #: No frame starts in this window: it holds the frame still on screen from before.
    borrowed: bool = False

    @property
    def frames(self) -> int:
        return self.stop - self.first


def plan_windows(times: FrameTimes, seconds: Seconds) -> list[Window]:
    """Consecutive windows of ``seconds`` covering the whole video (at least one)."""
    length = as_fraction(seconds)
    duration = times.duration
    count = max(1, -(-duration // length))  # ceil
    of_frame = window_of_frames(times, length)
    starts = np.searchsorted(of_frame, np.arange(count + 1), side="left")
    windows = []
    for k in range(int(count)):
        first, stop = int(starts[k]), int(starts[k + 1])
        borrowed = first == stop
        if borrowed:  # nothing starts here: the frame on screen is the one before
            first, stop = first - 1, first
        windows.append(Window(k, k * length, min((k + 1) * length, duration), first, stop,
                              borrowed=borrowed))
    return windows


def window_plans(window: Window, height: int, width: int, specs: Mapping[str, ViewSpec], *,
                 rng: Optional[np.random.Generator] = None, clip: int = 0,
                 clips: int = 1) -> dict[str, ViewPlan]:
    """The view plans of clip ``clip`` of ``window``, sampled as COVER samples a video of
    ``window.frames`` frames, with indices in the file's frame numbering."""
    plans = plan_views(window.frames, height, width, specs, rng=rng, clip=clip, clips=clips)
    return {name: replace(plan, indices=plan.indices + window.first)
            for name, plan in plans.items()}
