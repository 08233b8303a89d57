"""A synthetic labelled video set whose MOS is set by blur, for ``cover-train`` tests and demos.

Each video is a random blocky texture (its own cell colours and tint, cells of ``block`` pixels;
it drifts a pixel per frame) blurred with a Gaussian of standard deviation
``max_sigma * level``; its MOS is
``5 - 4 * level``, ``level`` spread evenly over [0, 1] in a random order. Sharpness is the only
thing MOS depends on, while content varies freely: a model has to learn that blur matters to
rank the set, which an untrained (random-weight) model does not do.

    python -m cover_engine.bench.labelled OUT_DIR [COUNT [START [SEED]]]

writes ``OUT_DIR/labels.txt`` and the videos ``blurSTART.mp4``...; another ``START`` gives other
content (a held-out set), another ``SEED`` another order of blur levels.
"""
from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
from scipy import ndimage

__all__ = ["blur_frames", "write_blur_set"]


def blur_frames(index: int, level: float, *, size: int = 96, frames: int = 16,
                max_sigma: float = 3.0, block: int = 3) -> list[np.ndarray]:
    """RGB uint8 frames of video ``index`` (content) at blur ``level`` in [0, 1]."""
    rng = np.random.default_rng(1000 + index)
    cells = rng.integers(0, 256, (size // block + 2, size // block + 2, 3)).astype(np.float32)
    tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    texture = np.kron(cells, np.ones((block, block, 1), np.float32))
    sigma = max_sigma * level
    out = []
    for t in range(frames):
        img = texture[t % block:t % block + size, :size] * tint
        if sigma > 0:
            img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _write(path: Path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p"
        stream.options = {"qp": "0"}  # lossless: the blur is the only degradation
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_blur_set(root, count: int, *, size: int = 96, frames: int = 16, seed: int = 0,
                   start: int = 0, labels: str = "labels.txt", block: int = 3,
                   max_sigma: float = 3.0) -> Path:
    """Write ``count`` videos ``blur{start..}.mp4`` and their upstream-format label file."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    levels = np.random.default_rng(seed).permutation(np.linspace(0.0, 1.0, count))
    lines = []
    for k, level in enumerate(levels):
        name = f"blur{start + k:03d}.mp4"
        _write(root / name, blur_frames(start + k, float(level), size=size, frames=frames,
                                              block=block, max_sigma=max_sigma))
        lines.append(f"{name},-1,-1,{5 - 4 * level:.4f}")
    path = root / labels
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 5:
        sys.exit("usage: python -m cover_engine.bench.labelled OUT_DIR [COUNT [START [SEED]]]")
    args = [int(a) for a in sys.argv[2:]] + [48, 0, 0][len(sys.argv) - 2:]
    written = write_blur_set(sys.argv[1], args[0], start=args[1], seed=args[2])
    print(f"wrote {written} ({args[0]} videos)")
