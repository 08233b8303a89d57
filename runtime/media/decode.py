"""Decoding with PyAV (FFmpeg): what a file is, and the frames a sample needs, each decoded once.

Choices, and why:

* **Frame indices** count decoded pictures in presentation order from the start of the first
  video stream, as decord's did upstream (VFR files are indexed the same way). Only the needed
  frames are kept, one at a time, so a long 4K file never fills memory.
* **Seeking**: decoding from the start up to the last needed frame costs a whole decode when
  the samples spread over the file (COVER's always do). So when needed frames lie far apart, a
  :class:`FrameIndex` is built by demuxing alone (frame ``i`` is the ``i``-th packet in
  timestamp order) and decoding jumps to the keyframe at or before each distant frame
  (:func:`seek_plan`). Each seek is tried out first by demuxing, and every decoded frame is
  named by its timestamp and must be the frame the index expects (0 first, then one more each
  time, from the start or from the keyframe a seek lands on). Anything doubtful -- packets
  without timestamps or sharing one, a first packet with leading pictures (the decoder drops
  them), a count other than the header's, a seek that lands past its keyframe, a packet that
  fails to decode, a frame out of turn -- leaves the frames not yet delivered to the sequential
  path, which decodes every frame from the start (``seek=False`` forces it). The two paths
  give the same frames.
* **Frame count**: the container's (``nb_frames``), else packets counted by demuxing (no
  decoding). If decoding then ends before a needed frame (a header that lies, a truncated or
  partly corrupt file), :class:`ShortVideoError` says how many frames decoded and the caller
  samples again (``views.load_views`` does). Packets that fail to decode are skipped. One
  exception, in the ``"decord"`` colour mode: packets an MP4 edit list drops (flagged discard,
  typically the last one) are frames to decord, which counts packets, and an index that falls
  on one gives the frame read before it, as upstream read it (:func:`_discarded_packets`).
* **Colour** (``colour``, :data:`~.constants.COLOUR_MODES`): planar YUV (8 to 16 bits,
  4:2:0/4:2:2/4:4:4/...) is converted by ``colour.py`` with the matrix and range the frame
  signals (BT.601 limited when it signals none; ``yuvj`` is full range). ``"decord"`` (default)
  gives exactly decord's RGB -- what upstream scored -- including its frame-size dependent
  chroma handling; ``"exact"`` is the float32 matrix with nearest chroma. Both convert only the
  pixels the views sample (:meth:`Frame.take`), which is cheaper than a full 4K conversion.
  Other formats (RGB PNG/BMP/TIFF, palette, grey, RGB 4:4:4 ``gbrp``) go through swscale to
  rgb24, where no matrix is involved.
* **Rotation** metadata (display matrix) is reported in :attr:`MediaInfo.rotation`. By default
  it is applied as the colour mode's reference does: decord turns frames whose rotation is a
  multiple of 90 degrees (before converting colour, so the conversion sees the turned planes);
  ``"exact"`` keeps today's behaviour, not turning them. ``rotate=True/False`` overrides.
* **Images** (JPEG, PNG, WebP, BMP, ... — FFmpeg's single-image demuxers) are one-frame inputs.
  Upstream read them with PIL, whose JPEG decoder smooths chroma; FFmpeg's does not, so JPEG
  views can differ from upstream's by a few levels at sharp colour edges, with either
  conversion (decord never saw them).
* A resolution change mid-stream is scaled (swscale, bilinear) back to the first frame's size,
  as decord's fixed-size output did.
* **Names are local files, never URLs**: FFmpeg reads ``http:b.mp4``, ``concat:a.mp4|b.mp4``,
  ``pipe:0`` or ``file:a.mp4`` as protocols, and ``img%d.png`` as an image sequence. Every input
  is opened by its absolute path (:func:`local_path`), with the protocol whitelist ``file`` and
  image patterns off, so each name means exactly the file of that name. Anything but a regular
  file (a FIFO, a device such as ``/dev/zero``, a folder) is refused by :func:`check_file` before
  FFmpeg sees it, with what it is.
"""
from __future__ import annotations

import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import av
import numpy as np

from cover_engine.runtime.constants import COLOUR_MODES, DEFAULT_COLOUR
from cover_engine.runtime.media.colour import (chroma_shift, convert, frame_conversion,
                                               matrix_for, yuv_to_rgb_coefficients)
from cover_engine.runtime.durable import kind_of
from cover_engine.runtime.errors import InputError, ShortVideoError

#: Planar YUV formats converted by ``colour.py`` (others go through swscale to rgb24).
_PLANAR_YUV = re.compile(r"^yuvj?a?(420|422|444|440|411|410)p(9|10|12|14|16)?(le|be)?$")
_AVCOL_RANGE_JPEG = 2
#: FFmpeg's AVFieldOrder: 0 unknown, 1 progressive, 2..5 the field orders of interlaced video.
_AV_FIELD_PROGRESSIVE = 1
#: Demuxer options for every input: only the ``file`` protocol (no network, pipes, concat...),
#: and an image name is that one image, never a pattern of several.
LOCAL_ONLY = {"protocol_whitelist": "file", "pattern_type": "none"}

#: Decoder threads for every file this process opens; None leaves FFmpeg's own choice (frame
#: threads, one per core and one more). Set with :func:`set_decoder_threads`.
_decoder_threads: Optional[int] = None


def set_decoder_threads(threads: Optional[int]) -> None:
    """Decode with at most ``threads`` threads in this process (None: FFmpeg's choice).

    Like ``torch.set_num_threads``, a per-process choice: a ``cover-batch`` worker that owns
    one core decodes with one thread, since frame threads of two such workers on two cores
    cost each about 8% of its time (BENCHMARKS.md, "cover-batch against cover-run"). The
    frames are the same with any number of threads."""
    global _decoder_threads
    if threads is not None and threads < 1:
        raise ValueError("decoder threads must be at least 1")
    _decoder_threads = threads


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learns about a file (sizes are the decoded, unrotated frames')."""

    path: str
    num_frames: int
    width: int
    height: int
    fps: float           # average frame rate (0 for images)
    codec: str
    pix_fmt: str
    bit_depth: int
    matrix: str          # YUV matrix used for RGB ("bt601", "bt709", ...), "rgb" if not YUV
    full_range: bool
    rotation: int        # display rotation, degrees counter-clockwise (see applies_rotation)
    is_image: bool
    counted: bool        # num_frames was counted by demuxing (the container gave none)
    interlaced: bool = False  # field-coded (the first frame, or the stream's field order, says so)


class Frame:
    """One decoded picture. RGB is made on demand: all of it, or only sampled pixels."""

    def __init__(self, *, rgb: Optional[np.ndarray] = None, planes: Sequence[np.ndarray] = (),
                 conv=None, owner: Optional[av.VideoFrame] = None):
        self._rgb, self._planes, self._conv = rgb, list(planes), conv
        self._owner = owner  # keeps the decoder's buffers behind ``planes`` alive
        self.height, self.width = (rgb if rgb is not None else self._planes[0]).shape[:2]

    @classmethod
    def from_av(cls, frame: av.VideoFrame, colour: str = DEFAULT_COLOUR,
                quarter_turns: int = 0) -> "Frame":
        """Planar YUV stays YUV until sampled (turned by ``quarter_turns`` x 90 degrees
        counter-clockwise first, as decord does); anything else becomes rgb24 through swscale."""
        if _PLANAR_YUV.match(frame.format.name):
            planes = [_plane(frame, i) for i in range(3)]
            if quarter_turns % 4:
                planes = [np.ascontiguousarray(np.rot90(p, quarter_turns)) for p in planes]
            return cls(planes=planes, conv=conversion(frame, colour, planes), owner=frame)
        rgb = frame.to_ndarray(format="rgb24")
        if quarter_turns % 4:
            rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
        return cls(rgb=rgb)

    def take(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(len(rows), len(cols), 3)`` of the pixels at ``rows x cols``."""
        if self._rgb is not None:
            return self._rgb[np.ix_(rows, cols)]
        return convert(*self._planes, self._conv, rows=rows, cols=cols)

    def to_rgb(self) -> np.ndarray:
        """The whole picture, RGB uint8 ``(H, W, 3)``."""
        return self._rgb if self._rgb is not None else convert(*self._planes, self._conv)


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = frame.planes[index]
    dtype = np.dtype(np.uint8 if frame.format.components[index].bits <= 8 else
                     (">u2" if frame.format.name.endswith("be") else "<u2"))
    rows = np.frombuffer(plane, dtype, count=plane.line_size * plane.height // dtype.itemsize)
    return rows.reshape(plane.height, -1)[:, :plane.width]


def conversion(frame: av.VideoFrame, colour: str = "exact",
               planes: Optional[Sequence[np.ndarray]] = None):
    """The YUV -> RGB conversion a YUV frame signals (BT.601 limited when it signals nothing),
    of kind ``colour``; ``planes`` (default: the frame's) fix the size and subsampling."""
    full = frame.color_range == _AVCOL_RANGE_JPEG or frame.format.name.startswith("yuvj")
    matrix, bits = matrix_for(frame.colorspace), frame.format.components[0].bits
    if colour == "exact":
        return yuv_to_rgb_coefficients(matrix, full, bits)
    if planes is None:
        planes = [_plane(frame, i) for i in range(2)]
    (h, w), (ch, cw) = planes[0].shape, planes[1].shape
    return frame_conversion(colour, matrix, full, bits, h, w, chroma_shift(w, cw),
                            chroma_shift(h, ch))


def quarter_turns(rotation: int) -> int:
    """Counter-clockwise quarter turns decord applies for a display rotation of ``rotation``
    degrees (counter-clockwise): only exact multiples of 90 turn the frame."""
    return (int(rotation) // 90) % 4 if int(rotation) % 90 == 0 else 0


def applies_rotation(rotate: Optional[bool], colour: str) -> bool:
    """Whether frames are turned: ``rotate`` when given, else as ``colour``'s reference does
    (decord turns them; "exact" keeps the unturned frames)."""
    if colour not in COLOUR_MODES:
        raise ValueError(f"unknown colour conversion {colour!r} (choose from "
                         f"{', '.join(COLOUR_MODES)})")
    return (colour == "decord") if rotate is None else bool(rotate)


def local_path(path) -> str:
    """The absolute path FFmpeg is given: a leading ``/`` can never parse as ``proto:``."""
    return os.path.abspath(os.fspath(path))


def check_file(path) -> None:
    """:class:`InputError` (one line, naming ``path``) unless it is a non-empty regular file
    (symlinks to one are fine): a FIFO would block the reader, a device never ends."""
    try:
        st = os.stat(local_path(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not a video or image")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is {kind_of(st.st_mode)}, not a video or image file")
    if st.st_size == 0:
        raise InputError(f"{path}: file is empty")


@contextmanager
def _open(path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and its first video stream, with clear errors for what is not a video."""
    check_file(path)
    try:
        container = av.open(local_path(path), container_options=dict(LOCAL_ONLY))
    except av.error.FFmpegError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"{path}: not a video or image FFmpeg can read ({reason})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with container:
        streams = [s for s in container.streams.video
                   if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            kind = "audio only" if container.streams.audio else "no streams FFmpeg can use"
            raise InputError(f"{path}: has no video stream ({kind})")
        stream = streams[0]
        if stream.codec_context is None:
            raise InputError(f"{path}: unsupported video codec (FFmpeg has no decoder for it)")
        stream.thread_type = "AUTO"
        if _decoder_threads is not None:
            stream.thread_count = _decoder_threads
        yield container, stream


def _decode_packet(packet: av.Packet) -> list[av.VideoFrame]:
    """The frames one packet completes (every decode goes through here; tests count them)."""
    return packet.decode()


def _decoded(container, stream) -> Iterator[av.VideoFrame]:
    """Every frame that decodes, in presentation order; undecodable packets are skipped and a
    broken container ends the stream (what decoded before it still counts)."""
    try:
        for packet in container.demux(stream):
            try:
                frames = _decode_packet(packet)
            except av.error.FFmpegError:
                continue
            yield from frames
    except av.error.FFmpegError:
        return


def _is_image(container) -> bool:
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _count_packets(path) -> int:
    with _open(path) as (container, stream):
        try:
            return sum(1 for p in container.demux(stream) if p.size)
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: cannot count frames ({exc.strerror or exc})") from None


def probe(path) -> MediaInfo:
    """Open ``path``, decode its first frame, and describe it (raises :class:`InputError`)."""
    with _open(path) as (container, stream):
        first = next(_decoded(container, stream), None)
        if first is None:
            raise InputError(f"{path}: no decodable video frames")
        is_image = _is_image(container)
        frames = 1 if is_image else int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate
        codec = stream.codec_context.name
        interlaced = bool(first.interlaced_frame) or \
            int(stream.codec_context.field_order or 0) > _AV_FIELD_PROGRESSIVE
    counted = frames <= 0
    if counted:
        frames = _count_packets(path)
    yuv = bool(_PLANAR_YUV.match(first.format.name))
    conv = conversion(first) if yuv else None
    return MediaInfo(path=str(path), num_frames=max(frames, 1), width=first.width,
                     height=first.height, fps=0.0 if is_image or not rate else float(rate),
                     codec=codec, pix_fmt=first.format.name,
                     bit_depth=max(c.bits for c in first.format.components),
                     matrix=conv.matrix if conv else "rgb",
                     full_range=conv.full_range if conv else True,
                     rotation=int(first.rotation or 0) % 360, is_image=is_image, counted=counted,
                     interlaced=interlaced and not is_image)


# ----------------------------------------------------------------------------- seeking

#: Seek only when decoding restarts at least this many frames past where it stands. A seek
#: costs a few frames' decoding (the decoder is flushed, its frame threads refill, and the
#: keyframe is the costliest picture): on 1280x720 H.264, 2 cores, reaching the 5th frame past a
#: keyframe took ~60 ms by seeking whatever the distance, and ~55, ~65, ~90 and ~135 ms by
#: decoding on from 4, 8, 16 and 32 frames before the keyframe.
MIN_SKIP = 8


@dataclass(frozen=True)
class FrameIndex:
    """Frame ``i``'s presentation timestamp and keyframe flag, learnt by demuxing alone."""

    pts: np.ndarray       # int64 (N,), strictly increasing, in the stream's time base
    dts: np.ndarray       # int64 (N,): decoding timestamp (the pts where a packet has none)
    keyframe: np.ndarray  # bool (N,): decoding may start at this frame

    def __len__(self) -> int:
        return len(self.pts)

    def frame_at(self, pts: Optional[int]) -> int:
        """The frame with timestamp ``pts``, or -1 when no frame has it."""
        if pts is None:
            return -1
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and self.pts[i] == pts else -1


def frame_index(path) -> Optional[FrameIndex]:
    """The index of ``path``'s first video stream, or ``None`` when its packets cannot name the
    frames the sequential path counts: a packet without a timestamp, two sharing one, packets
    the decoder is told to drop, a first packet that is not a keyframe or is not shown first
    (its leading pictures would be dropped), or a count other than the header's. Not for images.
    """
    with _open(path) as (container, stream):
        try:
            packets = [(p.pts, p.dts, p.is_keyframe, p.is_discard)
                       for p in container.demux(stream) if p.size]
        except av.error.FFmpegError:
            return None
        claimed = int(stream.frames or 0)
    if not packets or any(pts is None or discard for pts, _, _, discard in packets):
        return None
    pts = np.array([p[0] for p in packets], np.int64)
    order = np.argsort(pts, kind="stable")
    pts = pts[order]
    if np.any(np.diff(pts) <= 0) or (claimed and claimed != len(pts)):
        return None
    if not packets[0][2] or packets[0][0] != pts[0]:
        return None
    dts = np.array([p[0] if p[1] is None else p[1] for p in packets], np.int64)[order]
    return FrameIndex(pts, dts, np.array([p[2] for p in packets], bool)[order])


def seek_plan(keyframes: np.ndarray, wanted: Sequence[int], land: Callable[[int], Optional[int]],
              min_skip: int = MIN_SKIP) -> list[Optional[int]]:
    """For each of the ``wanted`` frames (sorted, distinct), the keyframe to seek to before
    decoding it, or ``None`` to decode on from the frame before.

    ``keyframes`` are the sorted frames decoding may start at (frame 0 among them). A seek to
    the keyframe at or before a wanted frame pays when decoding restarts at least ``min_skip``
    frames past where it stands (just after the previous wanted frame). ``land(key)`` says
    where a seek to ``key`` restarts decoding (``key``, or an earlier keyframe where the
    container's index is coarse), or ``None`` when it misses; a container that misses one seek
    is not trusted with any later one.
    """
    plan: list[Optional[int]] = []
    position, trusted = 0, True
    for target in wanted:
        key = int(keyframes[np.searchsorted(keyframes, target, side="right") - 1])
        seek = None
        if trusted and key - position >= min_skip:
            start = land(key)
            trusted = start is not None
            if trusted and start - position >= min_skip:
                seek = key
        plan.append(seek)
        position = target + 1
    return plan


class _Doubt(Exception):
    """The index and what the decoder delivers disagree: the sequential path must finish."""


def _seek(container, stream, stamp: int) -> None:
    """Seek to the keyframe at or before ``stamp`` (PyAV flushes the decoder)."""
    container.seek(stamp, stream=stream, backward=True, any_frame=False)


def _seek_to(container, stream, stamp: int) -> tuple[Optional[av.Packet], Iterator[av.Packet]]:
    """Seek, then the first packet demuxed from there and the packets after it."""
    _seek(container, stream, stamp)
    packets = container.demux(stream)
    return next((p for p in packets if p.size), None), packets


def _landing(container, stream, index: FrameIndex, key: int) -> Optional[tuple[int, int]]:
    """``(timestamp, keyframe)``: what to seek to for keyframe ``key``, and the keyframe at or
    before ``key`` that seek lands on; ``None`` if it lands elsewhere. Containers index by
    presentation or by decoding time, so the keyframe's pts is tried, then its dts."""
    for stamp in dict.fromkeys((int(index.pts[key]), int(index.dts[key]))):
        try:
            first, _ = _seek_to(container, stream, stamp)
        except av.error.FFmpegError:
            return None
        start = index.frame_at(first.pts) if first is not None and first.is_keyframe else -1
        if 0 <= start <= key:
            return stamp, start
    return None


def _indexed(container, stream, index: FrameIndex,
             seek: Optional[tuple[int, int]]) -> Iterator[tuple[int, av.VideoFrame]]:
    """``(i, frame)`` for the frames decoded from the start (``seek`` None) or after seeking
    to ``seek = (timestamp, keyframe)``, each named by its timestamp; raises :class:`_Doubt`
    unless they run 0, 1, 2, ... from the start, or on from that keyframe. (FFmpeg's decoders
    drop the leading pictures of a keyframe they start at, those shown before it.)"""
    try:
        if seek is None:
            expected, packets = 0, container.demux(stream)
        else:
            first, packets = _seek_to(container, stream, seek[0])
            expected = seek[1]
            if first is None or not first.is_keyframe or index.frame_at(first.pts) != expected:
                raise _Doubt
            packets = chain([first], packets)
        for packet in packets:
            for frame in _decode_packet(packet):
                i = index.frame_at(frame.pts)
                if i != expected:
                    raise _Doubt
                expected += 1
                yield i, frame
    except av.error.FFmpegError:
        raise _Doubt from None


def _seeking(container, stream, index: FrameIndex, wanted: Sequence[int],
             seeks: Sequence[Optional[tuple[int, int]]]
             ) -> Iterator[tuple[int, av.VideoFrame, tuple[int, int]]]:
    """``(i, frame, first frame's size)`` for each wanted frame, seeking where ``seeks`` say;
    frame 0 is always decoded (it fixes the size and proves the index starts right)."""
    frames = _indexed(container, stream, index, None)
    first = next(frames, None)
    if first is None:
        raise _Doubt
    size = (first[1].width, first[1].height)
    frames = chain([first], frames)
    for target, seek in zip(wanted, seeks):
        if seek is not None:
            frames = _indexed(container, stream, index, seek)
        for i, frame in frames:
            if i == target:
                yield i, frame, size
                break
        else:
            raise _Doubt  # the stream ended first; let the sequential path say how


def _sequential(path, container, stream, wanted: Sequence[int], *, decord_tail: bool = False
                ) -> Iterator[tuple[int, av.VideoFrame, tuple[int, int]]]:
    """``(i, frame, first frame's size)`` for each wanted frame, decoding every frame from the
    start; raises :class:`ShortVideoError` when the file ends first, except, with
    ``decord_tail``, for the indices of packets the file's edit list drops (see
    :func:`_discarded_packets`)."""
    need, count, size = iter(wanted), 0, None
    target, last = next(need), None
    for frame in _decoded(container, stream):
        size = size or (frame.width, frame.height)
        if count == target:
            yield count, frame, size
            last = frame
            target = next(need, None)
            if target is None:
                return
        count += 1
    if count == 0:
        raise InputError(f"{path}: no decodable video frames")
    rest = [target, *need]
    if decord_tail and last is not None and rest[-1] < count + _discarded_packets(path):
        for index in rest:  # decord: each such index repeats the frame read before it
            yield index, last, size
        return
    raise ShortVideoError(path, count, target)


def _discarded_packets(path) -> int:
    """Packets of the first video stream flagged discard: those an MP4 edit list leaves out.

    decord numbers them as frames (its count is the stream's packets) though they decode to
    nothing; upstream's samples can fall on them (2 of its 3 demo videos end with one). Read
    in increasing order on one reader, as upstream reads, such an index gives again the frame
    read just before it (measured with eva-decord on those videos and on clips whose edit list
    drops 1 or 2 packets). Read first, it gives some earlier frame, by a rule not modelled here:
    COVER's samples always include a frame that decodes, so that case stays a
    :class:`ShortVideoError`.
    """
    with _open(path) as (container, stream):
        try:
            return sum(1 for p in container.demux(stream) if p.size and p.is_discard)
        except av.error.FFmpegError:
            return 0


def _plan(path, wanted: Sequence[int]) -> Optional[tuple[FrameIndex, list]]:
    """The index, and per wanted frame the ``(timestamp, keyframe)`` to seek to first or
    ``None``; ``None`` when no seek would pay. No index is built when no gap between wanted
    frames is :data:`MIN_SKIP` long. Each seek is tried out first, demuxing only, on a
    container of its own."""
    if np.max(np.diff(np.concatenate([[-1], wanted]))) <= MIN_SKIP:
        return None
    index = frame_index(path)
    if index is None or wanted[-1] >= len(index):
        return None
    landings: dict[int, Optional[tuple[int, int]]] = {}
    with _open(path) as (container, stream):
        def land(key: int) -> Optional[int]:
            landings[key] = _landing(container, stream, index, key)
            return None if landings[key] is None else landings[key][1]

        plan = seek_plan(np.flatnonzero(index.keyframe), wanted, land)
    seeks = [None if key is None else landings[key] for key in plan]
    return (index, seeks) if any(seeks) else None


def iter_frames(path, indices: Iterable[int], *, rotate: Optional[bool] = None,
                seek: bool = True, colour: str = DEFAULT_COLOUR) -> Iterator[tuple[int, Frame]]:
    """``(index, Frame)`` for each distinct requested index, in increasing order, converted
    with ``colour`` and turned per :func:`applies_rotation`.

    Frames far apart are reached by seeking (see the module notes); ``seek=False`` decodes
    every frame from the start up to the last requested one. Raises :class:`ShortVideoError`
    when the file ends first, :class:`InputError` when nothing decodes.
    """
    rotate = applies_rotation(rotate, colour)
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return
    if wanted[0] < 0:
        raise ValueError(f"negative frame index {wanted[0]}")
    planned = _plan(path, wanted) if seek else None
    if planned is not None:
        done = -1
        with _open(path) as (container, stream):
            try:
                for i, frame, size in _seeking(container, stream, planned[0], wanted,
                                               planned[1]):
                    yield i, _picture(frame, size, rotate, colour)
                    done = i
                return
            except _Doubt:
                wanted = [i for i in wanted if i > done]
    with _open(path) as (container, stream):
        for i, frame, size in _sequential(path, container, stream, wanted,
                                          decord_tail=colour == "decord"):
            yield i, _picture(frame, size, rotate, colour)


def _picture(frame: av.VideoFrame, size: tuple[int, int], rotate: bool,
             colour: str = DEFAULT_COLOUR) -> Frame:
    """The :class:`Frame` of a decoded picture: scaled back to the first frame's size if the
    stream changed resolution, turned when ``rotate`` asks (decord: the YUV planes, before
    converting; exact: the RGB picture, rounding the angle to quarter turns)."""
    degrees = (frame.rotation or 0) if rotate else 0
    if (frame.width, frame.height) != size:
        frame = frame.reformat(width=size[0], height=size[1])
    if colour == "decord":
        return Frame.from_av(frame, colour, quarter_turns(degrees))
    return _rotated(Frame.from_av(frame, colour), degrees)


def _rotated(frame: Frame, degrees) -> Frame:
    turns = int(round((degrees or 0) / 90)) % 4
    return Frame(rgb=np.ascontiguousarray(np.rot90(frame.to_rgb(), turns))) if turns else frame


def read_frames(path, indices: Iterable[int], *, rotate: Optional[bool] = None,
                seek: bool = True, colour: str = DEFAULT_COLOUR
                ) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, RGB uint8 (H, W, 3))`` for each distinct requested index, in increasing order
    (see :func:`iter_frames`); hold only the frames you need, they are large."""
    for index, frame in iter_frames(path, indices, rotate=rotate, seek=seek, colour=colour):
        yield index, frame.to_rgb()
