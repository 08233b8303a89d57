"""Synthetic test clips with motion and texture, written with PyAV's encoders.

Used for the bundled sample and for ``cover-bench``'s inputs, which are encoded once and cached
(:func:`bench_clip`). The content is deterministic for a
seed: a drifting multi-scale texture with a moving bright disc and a slow colour cycle, so that
encoders do real work (motion, detail) and every branch sees something other than flat colour.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import av
import numpy as np

from cover_engine.runtime.errors import InputError

CODECS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "mpeg4": "mpeg4"}
RESOLUTIONS = {"4k": (3840, 2160), "1080p": (1920, 1080), "720p": (1280, 720),
               "480p": (854, 480), "360p": (640, 360)}


def parse_resolution(text: str) -> tuple[int, int]:
    """``4k``/``1080p``/``720p`` or ``WxH`` -> (width, height)."""
    key = text.lower()
    if key in RESOLUTIONS:
        return RESOLUTIONS[key]
    try:
        w, h = (int(v) for v in key.split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r}: use one of {', '.join(RESOLUTIONS)} or WxH") from None
    if w < 2 or h < 2:
        raise ValueError(f"resolution {text!r} is too small")
    return w, h


def synthetic_frame(width: int, height: int, index: int, seed: int = 0) -> np.ndarray:
    """One RGB uint8 frame (height, width, 3) of the synthetic clip."""
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=6)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    t = index / 30.0
    texture = (np.sin(40 * (x + 0.05 * t) + phases[0]) * np.sin(25 * (y - 0.03 * t) + phases[1])
               + 0.5 * np.sin(170 * (x * 0.8 + y * 0.6) + 3 * t + phases[2]))
    cx, cy = 0.5 + 0.3 * np.cos(t + phases[3]), 0.5 + 0.3 * np.sin(1.3 * t + phases[4])
    disc = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.01)
    base = 0.5 + 0.25 * texture + 0.4 * disc
    hue = np.array([np.sin(t + phases[5]), np.sin(t + phases[5] + 2.1), np.sin(t + phases[5] + 4.2)],
                   dtype=np.float32)
    rgb = base[..., None] * (0.8 + 0.2 * hue) + 0.05 * hue
    return np.clip(rgb * 255.0, 0, 255).astype(np.uint8)


def write_clip(path: Path, width: int, height: int, frames: int, *, codec: str = "h264",
               fps: int = 30, crf: int = 23, seed: int = 0) -> Path:
    """Encode ``frames`` synthetic frames to ``path`` (written to a temp name, then renamed)."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r}: choose from {', '.join(CODECS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part" + path.suffix)
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream(CODECS[codec], rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec in ("h264", "hevc"):
            stream.options = {"crf": str(crf), "preset": "medium"}
            if codec == "hevc":
                stream.options["x265-params"] = "log-level=error"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(width, height, i, seed), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


if __name__ == "__main__":  # regenerate the bundled sample
    out = write_clip(Path(__file__).resolve().parent.parent / "samples" / "sample.mp4",
                     480, 270, 64, crf=28)
    print(out, out.stat().st_size, "bytes")


#: Codecs ``cover-bench`` can generate its clip in.
BENCH_CODECS = ("h264", "hevc")


def clip_cache_dir() -> Path:
    """Generated clips live beside cover-fetch's cache, in ``bench-clips/``."""
    try:
        from cover_engine.runtime.fetch import cache_dir
    except ImportError:
        return Path.home() / ".cache" / "cover-engine" / "bench-clips"
    return cache_dir() / "bench-clips"


def bench_clip(resolution: str, frames: int, codec: str, log: Callable[[str], None]) -> tuple[Path, bool]:
    """The cached synthetic clip for these settings, encoded on first use; (path, generated)."""
    width, height = parse_resolution(resolution)
    if codec in ("h264", "hevc") and (width % 2 or height % 2):
        raise InputError(f"resolution {width}x{height}: {codec} in yuv420p needs even sizes")
    path = clip_cache_dir() / f"synthetic-{width}x{height}-{frames}f-{codec}.mp4"
    if path.is_file():
        return path, False
    log(f"cover-bench: encoding a {frames}-frame {width}x{height} {codec} clip into {path} (once)")
    write_clip(path, width, height, frames, codec=codec)
    return path, True
