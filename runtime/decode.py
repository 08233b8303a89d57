"""Decoding with PyAV (FFmpeg): what a file is, and the frames a sample needs, each decoded once.

Choices, and why:

* **Frame indices** count decoded pictures in presentation order from the start of the first
  video stream, as decord's did upstream; timestamps are ignored (VFR files are indexed the same
  way). Decoding runs forward from the start and stops after the last needed frame; only the
  needed frames are kept, one at a time, so a long 4K file never fills memory.
* **Frame count**: the container's (``nb_frames``), else packets counted by demuxing (no
  decoding). If decoding then ends before a needed frame (a header that lies, a truncated or
  partly corrupt file), :class:`ShortVideoError` says how many frames decoded and the caller
  samples again (``views.load_views`` does). Packets that fail to decode are skipped.
* **Colour**: planar YUV (8 to 16 bits, 4:2:0/4:2:2/4:4:4/...) is converted by ``colour.py``
  with the matrix and range the frame signals (BT.601 limited when it signals none; ``yuvj`` is
  full range), nearest chroma. Measured against that exact maths, FFmpeg's default swscale path
  (what decord used, and ``frame.to_ndarray(format="rgb24")`` gives) is up to 3 levels off (mean
  0.9 on a test pattern); the exact version is what a GPU kernel can match bit for bit, and it
  converts only the pixels the views sample (:meth:`Frame.take`), which is cheaper than a full
  4K conversion. Other formats (RGB PNG/BMP/TIFF, palette, grey, RGB 4:4:4 ``gbrp``) go through
  swscale to rgb24, where no matrix is involved.
* **Rotation** metadata (display matrix) is reported in :attr:`MediaInfo.rotation` and, like
  decord (so like the data COVER was trained and evaluated on), not applied unless asked
  (``rotate=True``: counter-clockwise, multiples of 90 degrees, flips ignored).
* **Images** (JPEG, PNG, WebP, BMP, ... — FFmpeg's single-image demuxers) are one-frame inputs.
  Upstream read them with PIL, whose JPEG decoder smooths chroma; FFmpeg's does not, so JPEG
  views can differ from upstream's by a few levels at sharp colour edges.
* A resolution change mid-stream is scaled (swscale, bilinear) back to the first frame's size,
  as decord's fixed-size output did.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import av
import numpy as np

from .colour import YuvToRgb, matrix_for, yuv_to_rgb, yuv_to_rgb_coefficients
from .errors import InputError

#: Planar YUV formats converted by ``colour.py`` (others go through swscale to rgb24).
_PLANAR_YUV = re.compile(r"^yuvj?a?(420|422|444|440|411|410)p(9|10|12|14|16)?(le|be)?$")
_AVCOL_RANGE_JPEG = 2


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
    rotation: int        # display rotation, degrees counter-clockwise (not applied by default)
    is_image: bool
    counted: bool        # num_frames was counted by demuxing (the container gave none)


class ShortVideoError(InputError):
    """Decoding ended before a requested frame: the file has fewer frames than it claims."""

    def __init__(self, path, decoded: int, wanted: int):
        super().__init__(f"{path}: only {decoded} frames decode, frame {wanted} was requested")
        self.decoded = decoded


class Frame:
    """One decoded picture. RGB is made on demand: all of it, or only sampled pixels."""

    def __init__(self, *, rgb: Optional[np.ndarray] = None, planes: Sequence[np.ndarray] = (),
                 conv: Optional[YuvToRgb] = None, owner: Optional[av.VideoFrame] = None):
        self._rgb, self._planes, self._conv = rgb, list(planes), conv
        self._owner = owner  # keeps the decoder's buffers behind ``planes`` alive
        self.height, self.width = (rgb if rgb is not None else self._planes[0]).shape[:2]

    @classmethod
    def from_av(cls, frame: av.VideoFrame) -> "Frame":
        """Planar YUV stays YUV until sampled; anything else becomes rgb24 through swscale."""
        if _PLANAR_YUV.match(frame.format.name):
            return cls(planes=[_plane(frame, i) for i in range(3)], conv=conversion(frame),
                       owner=frame)
        return cls(rgb=frame.to_ndarray(format="rgb24"))

    def take(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(len(rows), len(cols), 3)`` of the pixels at ``rows x cols``."""
        if self._rgb is not None:
            return self._rgb[np.ix_(rows, cols)]
        return yuv_to_rgb(*self._planes, self._conv, rows=rows, cols=cols)

    def to_rgb(self) -> np.ndarray:
        """The whole picture, RGB uint8 ``(H, W, 3)``."""
        return self._rgb if self._rgb is not None else yuv_to_rgb(*self._planes, self._conv)


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = frame.planes[index]
    dtype = np.dtype(np.uint8 if frame.format.components[index].bits <= 8 else
                     (">u2" if frame.format.name.endswith("be") else "<u2"))
    rows = np.frombuffer(plane, dtype, count=plane.line_size * plane.height // dtype.itemsize)
    return rows.reshape(plane.height, -1)[:, :plane.width]


def conversion(frame: av.VideoFrame) -> YuvToRgb:
    """The YUV -> RGB conversion a YUV frame signals (BT.601 limited when it signals nothing)."""
    full = frame.color_range == _AVCOL_RANGE_JPEG or frame.format.name.startswith("yuvj")
    return yuv_to_rgb_coefficients(matrix_for(frame.colorspace), full,
                                   frame.format.components[0].bits)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a video or image")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")


@contextmanager
def _open(path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and its first video stream, with clear errors for what is not a video."""
    path = Path(path)
    _check_file(path)
    try:
        container = av.open(str(path))
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
        yield container, stream


def _decoded(container, stream) -> Iterator[av.VideoFrame]:
    """Every frame that decodes, in presentation order; undecodable packets are skipped and a
    broken container ends the stream (what decoded before it still counts)."""
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
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
                     rotation=int(first.rotation or 0) % 360, is_image=is_image, counted=counted)


def iter_frames(path, indices: Iterable[int], *,
                rotate: bool = False) -> Iterator[tuple[int, Frame]]:
    """``(index, Frame)`` for each distinct requested index, in increasing order.

    Decodes from the start and stops after the last requested frame. Raises
    :class:`ShortVideoError` when the file ends first, :class:`InputError` when nothing decodes.
    """
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return
    if wanted[0] < 0:
        raise ValueError(f"negative frame index {wanted[0]}")
    with _open(path) as (container, stream):
        need, count, size = iter(wanted), 0, None
        target = next(need)
        for av_frame in _decoded(container, stream):
            size = size or (av_frame.width, av_frame.height)
            if count == target:
                degrees = av_frame.rotation if rotate else 0
                if (av_frame.width, av_frame.height) != size:
                    av_frame = av_frame.reformat(width=size[0], height=size[1])
                yield count, _rotated(Frame.from_av(av_frame), degrees)
                target = next(need, None)
                if target is None:
                    return
            count += 1
    if count == 0:
        raise InputError(f"{path}: no decodable video frames")
    raise ShortVideoError(path, count, target)


def _rotated(frame: Frame, degrees) -> Frame:
    turns = int(round((degrees or 0) / 90)) % 4
    return Frame(rgb=np.ascontiguousarray(np.rot90(frame.to_rgb(), turns))) if turns else frame


def read_frames(path, indices: Iterable[int], *,
                rotate: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, RGB uint8 (H, W, 3))`` for each distinct requested index, in increasing order
    (see :func:`iter_frames`); hold only the frames you need, they are large."""
    for index, frame in iter_frames(path, indices, rotate=rotate):
        yield index, frame.to_rgb()
