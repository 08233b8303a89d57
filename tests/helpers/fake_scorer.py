"""A fake scorer over a generated labelled set: each "video" is a text file holding its quality."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cover_engine.runtime.errors import InputError
from cover_engine.runtime.eval.labels import LabelItem
from cover_engine.runtime.results import FileScore


class FakeScorer:
    """Scores a file from the number written in it; ``corrupt`` files are rejected like bad videos."""

    name = "fake"

    def __init__(self, fail_at: int = 0, exc: BaseException | None = None):
        self.calls: list[str] = []
        self.fail_at, self.exc = fail_at, exc

    def score(self, path) -> FileScore:
        self.calls.append(Path(path).name)
        if self.fail_at and len(self.calls) == self.fail_at:
            raise self.exc
        text = Path(path).read_text()
        if text.startswith("corrupt"):
            raise InputError(f"{path}: not a video (moov atom\nnot found)")
        q = float(text)
        sem, tech, aes = 0.1 * q, 0.02 * q * q - 0.5, -0.05 * q + 0.01 * np.sin(7 * q)
        return FileScore(str(path), sem, tech, aes, sem + tech + aes, frames=30, resolution="64x48",
                         backend=self.name, seconds=0.01)


def make_set(root: Path, n: int = 12, missing=(), corrupt=()) -> tuple[Path, list[LabelItem]]:
    """``n`` files under root/videos with an upstream-format label file; some absent or corrupt."""
    rng = np.random.default_rng(0)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines, items = [], []
    for i in range(n):
        name = f"videos/v{i:03d}.mp4"
        quality = float(rng.uniform(0, 10))
        mos = float(1 + 4 / (1 + np.exp(-(quality - 5))) + rng.normal(0, 0.2))
        if i not in missing:
            (root / name).write_text("corrupt" if i in corrupt else repr(quality))
        lines.append(f"{name}, -1, -1, {mos!r}")
        items.append(LabelItem(name, float(mos), i + 1))
    labels = root / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels, items
