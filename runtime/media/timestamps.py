"""When each frame is shown, learnt by demuxing alone (no decoding): the clock of ``--segments``.

Frames are numbered as the decoder delivers them (presentation order, see ``decode``), so frame
``i`` is shown at the ``i``-th smallest packet timestamp. That holds for variable frame rate
too, which is why windows are cut on these timestamps rather than on ``i / fps``. When the
packets cannot name every frame (a packet without a timestamp, two sharing one, a packet count
other than the frame count decoding uses), the times are made up from the average frame rate
instead, and :attr:`FrameTimes.source` says so.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import av
import numpy as np

from cover_engine.runtime.errors import InputError
from cover_engine.runtime.media.decode import MediaInfo, _open
from cover_engine.runtime.views.segments import FrameTimes, uniform_times

__all__ = ["frame_times", "packet_times"]


def packet_times(path) -> Optional[FrameTimes]:
    """Times from the packets' timestamps, or ``None`` when they cannot name every frame."""
    with _open(path) as (container, stream):
        try:
            packets = [(p.pts, p.duration) for p in container.demux(stream) if p.size]
        except av.error.FFmpegError:
            return None
        time_base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
    if not packets or time_base is None or any(pts is None for pts, _ in packets):
        return None
    order = sorted(range(len(packets)), key=lambda i: packets[i][0])
    pts = np.array([packets[i][0] for i in order], np.int64)
    if np.any(np.diff(pts) <= 0):
        return None
    last = packets[order[-1]][1] or 0
    if last <= 0:  # no duration on the last packet: the typical step, else one frame at the rate
        steps = np.diff(pts)
        if len(steps):
            last = int(np.median(steps))
        elif rate:
            last = max(1, round(1 / (Fraction(rate) * Fraction(time_base))))
        else:
            last = 1
    return FrameTimes(pts, int(pts[-1]) + int(last), Fraction(time_base))


def frame_times(path, info: MediaInfo) -> FrameTimes:
    """The presentation time of each of ``info.num_frames`` frames (see the module notes)."""
    if info.is_image:
        return uniform_times(1, 1)
    times = packet_times(path)
    if times is not None and len(times) == info.num_frames:
        return times
    if info.fps <= 0:
        raise InputError(f"{path}: neither frame timestamps nor a frame rate to cut windows by")
    return uniform_times(info.num_frames, Fraction(info.fps).limit_denominator(1_000_000))
