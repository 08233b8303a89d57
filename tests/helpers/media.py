"""Tiny test media written with PyAV: a known RGB pattern, encoded with a chosen codec/format."""
from __future__ import annotations

from fractions import Fraction
import struct
from pathlib import Path
from typing import Callable, Optional, Sequence

import av
import numpy as np


def pattern(height: int, width: int, t: int = 0) -> np.ndarray:
    """A smooth RGB test picture that changes with ``t``: R ramps along x, G along y, B along the
    diagonal (shifted by ``t``), so colour errors and swapped/misplaced frames both show."""
    y, x = np.mgrid[0:height, 0:width]
    r = x * 255 // max(width - 1, 1)
    g = y * 255 // max(height - 1, 1)
    b = ((x + y) * 200 // max(height + width - 2, 1) + 8 * t) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def flat(height: int, width: int, t: int = 0, noise: int = 0) -> np.ndarray:
    """A grey whose mean level encodes ``t`` (10 + 20 t), so frame identity survives any codec;
    ``noise`` adds a seeded +-noise texture, which makes frames costly to encode (big packets)."""
    level = np.full((height, width, 3), (10 + 20 * t) % 256, np.int16)
    if noise:
        level += np.random.default_rng(t).integers(-noise, noise + 1, level.shape, dtype=np.int16)
    return np.clip(level, 0, 255).astype(np.uint8)


def textured(height: int, width: int, t: int = 0, noise: int = 6) -> np.ndarray:
    """:func:`pattern` under a seeded +-``noise`` texture: every frame differs from every other
    (a wrong frame shows), yet consecutive frames stay alike, so encoders predict across them
    (P- and B-frames, groups of pictures as asked) instead of starting new scenes."""
    texture = np.random.default_rng(t).integers(-noise, noise + 1, (height, width, 3))
    return np.clip(pattern(height, width, t) + texture, 0, 255).astype(np.uint8)


def frame_number(rgb: np.ndarray) -> int:
    """``t`` of a decoded :func:`flat` frame (robust to a few levels of codec error)."""
    return int(round((float(rgb.mean()) - 10) / 20))


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def write_video(path, frames: Sequence[np.ndarray], *, codec: str = "libx264",
                pix_fmt: str = "yuv420p", rate: int = 25, options: Optional[dict] = None,
                pts: Optional[Sequence[int]] = None, time_base: Optional[Fraction] = None,
                colorspace: Optional[int] = None, color_range: Optional[int] = None,
                signal: bool = True, rotation: Optional[int] = None) -> Path:
    """Encode RGB frames. ``pts`` (in ``time_base``) makes a variable-frame-rate file; pixels
    are converted with ``colorspace``/``color_range`` (FFmpeg AVColorSpace/AVColorRange), which
    the stream signals unless ``signal`` is False."""
    path = Path(path)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"qp": "0"} if options is None and codec.startswith("libx26") else \
            dict(options or {})
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if signal and colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if signal and color_range is not None:
            stream.codec_context.color_range = color_range
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = _to_yuv(frame, pix_fmt, colorspace, color_range, signal)
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


_SWS_CS = {1: "ITU709", 9: "BT2020", 5: "ITU601", 6: "ITU601"}


def _to_yuv(frame, pix_fmt, colorspace, color_range, signal):
    if colorspace is None and color_range is None:
        return frame
    out = frame.reformat(format=pix_fmt, dst_colorspace=_SWS_CS.get(colorspace, "ITU601"),
                         dst_color_range=color_range or 1)
    if not signal:
        out.colorspace, out.color_range = 2, 0  # unspecified
    return out


def remux(src, dst, edit: Callable[[list], Sequence]) -> Path:
    """Copy the video packets of ``src`` (decoding order) into ``dst`` as ``edit`` returns
    them (dropped, or stamped anew): files no encoder would write."""
    dst = Path(dst)
    with av.open(str(src)) as source, av.open(str(dst), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in edit([p for p in source.demux(video=0) if p.size]):
            packet.stream = stream
            target.mux(packet)
    return dst


def drop_by_edit_list(src, dst, frames: int, rate: int) -> Path:
    """A copy of MP4 ``src`` whose edit list ends ``frames`` frames early (at ``rate`` fps): the
    packets stay in the file and FFmpeg's demuxer flags them discard, as in 2 of upstream's 3
    demo videos."""
    data = bytearray(Path(src).read_bytes())
    mvhd = data.find(b"mvhd")
    timescale = struct.unpack_from(">I", data, mvhd + (24 if data[mvhd + 4] else 16))[0]
    elst = data.find(b"elst")
    assert elst > 0 and data[elst + 4] == 0, "a version-0 edit list was expected"
    duration = struct.unpack_from(">I", data, elst + 12)[0]
    struct.pack_into(">I", data, elst + 12, duration - round(frames * timescale / rate) - 1)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def write_image(path, rgb: np.ndarray, *, codec: Optional[str] = None,
                pix_fmt: Optional[str] = None) -> Path:
    """One picture as an image file (codec from the extension: jpg, png, webp, bmp)."""
    path = Path(path)
    defaults = {".jpg": ("mjpeg", "yuvj444p"), ".jpeg": ("mjpeg", "yuvj444p"),
                ".png": ("png", "rgb24"), ".webp": ("libwebp", "yuv420p"),
                ".bmp": ("bmp", "bgr24")}
    codec_default, pix_default = defaults[path.suffix.lower()]
    codec, pix_fmt = codec or codec_default, pix_fmt or pix_default
    height, width = rgb.shape[:2]
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "mjpeg":
            stream.options = {"qmin": "1", "qmax": "1"}
            stream.codec_context.color_range = 2
        elif codec == "libwebp":
            stream.options = {"quality": "100"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in stream.encode(frame.reformat(format=pix_fmt)):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio(path, seconds: float = 0.2, rate: int = 8000) -> Path:
    """A silent mono WAV: a media file without any video stream."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, int(seconds * rate)), np.int16),
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def noisy_mp4(path: Path, frames: int = 12) -> Path:
    """An MP4 with its index first (faststart) and big noisy frames: cut short, it keeps a header
    that claims every frame (for truncated-file tests)."""
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
