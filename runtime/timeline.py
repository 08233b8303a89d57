"""Scores over time: consecutive windows of a video, each scored as COVER scores a clip.

Every window's frames are planned first (``views.segments``: cheap index arrays), then the file
is decoded once, in order, for all windows together: each decoded frame is sampled into the
window(s) that need it, and a window is scored and its views dropped as soon as its last frame
is in. At most two windows' views exist at once (a window and one that borrows its last
frame), so memory does not grow with the length of the video, whatever its resolution.

The whole-video scores are the mean of the windows' scores (each branch, and overall as their
sum). With ``clips > 1`` each window averages that many clips, as a whole-file score does.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Mapping, Optional

import numpy as np

from cover_engine.runtime.constants import BRANCHES, DEFAULT_COLOUR, ViewSpec
from cover_engine.runtime.engines.base import Backend
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.media.decode import (MediaInfo, ShortVideoError, applies_rotation,
                                               iter_frames, probe)
from cover_engine.runtime.media.timestamps import frame_times
from cover_engine.runtime.results import FileScore, branch_scores, file_score
from cover_engine.runtime.views.assemble import ViewAssembler, frame_size, load_views, normalise
from cover_engine.runtime.views.sampling import needed_frames
from cover_engine.runtime.views.segments import (FrameTimes, Seconds, Window, plan_windows,
                                                 window_plans)

__all__ = ["SegmentScore", "score_segments", "window_rng", "segment_rows"]

SCORE_KEYS = BRANCHES + ("overall",)


@dataclass(frozen=True)
class SegmentScore:
    """One window's scores; ``start``/``end`` in seconds after the first frame."""

    index: int
    start: float
    end: float
    frames: int
    semantic: float
    technical: float
    aesthetic: float
    overall: float

    def to_dict(self) -> dict:
        """The JSON form: ``{start, end, frames, semantic, technical, aesthetic, overall}``."""
        return {"start": self.start, "end": self.end, "frames": self.frames,
                **{k: getattr(self, k) for k in SCORE_KEYS}}


def window_rng(seed: Optional[int], window: int, clip: int) -> Optional[np.random.Generator]:
    """Random offsets of one clip of one window (``None``: deterministic middle offsets)."""
    return None if seed is None else np.random.default_rng((seed, window, clip))


class _Pending:
    """One window being filled: its clips' assemblers, created only when its first frame comes."""

    def __init__(self, window: Window, plans: list[dict]):
        self.window = window
        self.plans = plans
        needed = needed_frames(*[{n: p.indices for n, p in clip.items()} for clip in plans])
        self.first, self.last = int(needed[0]), int(needed[-1])
        self.needed = needed
        self.assemblers: Optional[list[ViewAssembler]] = None

    def open(self) -> None:
        self.assemblers = [ViewAssembler(clip) for clip in self.plans]

    def add(self, index: int, frame) -> None:
        for assembler in self.assemblers:
            assembler.add(index, frame)

    def views(self, specs: Mapping[str, ViewSpec]) -> dict[str, np.ndarray]:
        done = [a.views() for a in self.assemblers]
        self.assemblers = None
        return {name: np.stack([normalise(v[name], spec) for v in done])
                for name, spec in specs.items()}


def _plan(times: FrameTimes, size: tuple[int, int], specs, seconds, seed,
          clips) -> list[_Pending]:
    return [_Pending(w, [window_plans(w, *size, specs, rng=window_rng(seed, w.index, k), clip=k,
                                      clips=clips)
                         for k in range(clips)])
            for w in plan_windows(times, seconds)]


def _score_windows(backend: Backend, path, info: MediaInfo, times: FrameTimes, seconds,
                   seed, clips, seek: bool, colour: str) -> list[SegmentScore]:
    """Decode once for all windows, scoring each as soon as it is complete."""
    rotate = applies_rotation(None, colour)
    pending = sorted(_plan(times, frame_size(info, rotate, colour), backend.specs, seconds, seed,
                           clips), key=lambda p: p.first)
    wanted = np.unique(np.concatenate([p.needed for p in pending]))
    scores: dict[int, SegmentScore] = {}
    active: list[_Pending] = []
    upcoming = 0
    for index, frame in iter_frames(path, wanted, rotate=rotate, seek=seek, colour=colour):
        while upcoming < len(pending) and pending[upcoming].first <= index:
            pending[upcoming].open()
            active.append(pending[upcoming])
            upcoming += 1
        for item in active:
            item.add(index, frame)
        for item in [a for a in active if a.last == index]:
            active.remove(item)
            scores[item.window.index] = _segment_score(path, item.window,
                                                       backend.run(item.views(backend.specs)))
        del frame
    return [scores[k] for k in sorted(scores)]


def _segment_score(path, window: Window, maps) -> SegmentScore:
    mean = {k: float(v.mean()) for k, v in branch_scores(maps).items()}
    bad = [f"{k} = {v}" for k, v in mean.items() if not math.isfinite(v)]
    if bad:  # as for a whole file: a non-finite score is never reported
        raise InputError(f"{path}: the model gave a non-finite score in the window at "
                         f"{float(window.start):g} s ({', '.join(bad)}); not reported")
    return SegmentScore(window.index, float(window.start), float(window.end), window.frames,
                        **{k: mean[k] for k in SCORE_KEYS})


def score_segments(backend: Backend, path, seconds: Seconds, *, seed: Optional[int] = None,
                   clips: int = 1, name: Optional[str] = None,
                   colour: str = DEFAULT_COLOUR) -> FileScore:
    """The :class:`FileScore` of ``path`` as the mean of its windows of ``seconds``, with the
    windows in ``segments``. An image has no timeline: it is scored as usual, ``segments`` [].
    Frames are converted and turned as ``colour`` says, as for a whole-file score.
    """
    started = time.perf_counter()
    info = probe(path)
    if info.is_image:
        views, info = load_views(path, backend.specs, seed=seed, clips=clips, colour=colour)
        result = file_score(path, backend.run(views), info, backend.name, started, colour=colour)
        result.segments = []
        return result
    times = frame_times(path, info)
    try:
        segments = _score_windows(backend, path, info, times, seconds, seed, clips, seek=True,
                                  colour=colour)
    except ShortVideoError as exc:  # fewer frames decode than the file lists: plan on those
        info = replace(info, num_frames=exc.decoded, counted=True)
        times = times.head(exc.decoded)
        try:
            segments = _score_windows(backend, path, info, times, seconds, seed, clips,
                                      seek=False, colour=colour)
        except ShortVideoError as again:
            raise InputError(f"{path}: frame count changes between reads ({again})") from None
    mean = {k: float(np.mean([getattr(s, k) for s in segments])) for k in SCORE_KEYS}
    return FileScore(path=str(path) if name is None else name, **mean,
                     frames=int(info.num_frames), resolution=f"{info.width}x{info.height}",
                     backend=backend.name, seconds=time.perf_counter() - started,
                     colour=colour, segments=[s.to_dict() for s in segments])


#: Columns of the per-window CSV (``cover-run --segments --csv``), before any extras.
SEGMENT_COLUMNS: tuple[str, ...] = ("name", "segment", "start", "end", "frames") + SCORE_KEYS


def segment_rows(score: FileScore) -> list[dict[str, str]]:
    """Rows of the per-window CSV for one file (scores with ``repr``, exact)."""
    rows = []
    for k, seg in enumerate(score.segments or ()):
        row = {"name": score.path, "segment": str(k), "start": repr(float(seg["start"])),
               "end": repr(float(seg["end"])), "frames": str(int(seg["frames"]))}
        row.update({key: repr(float(seg[key])) for key in SCORE_KEYS})
        if seg.get("mos") is not None:
            row["mos"] = repr(float(seg["mos"]))
        rows.append(row)
    return rows
