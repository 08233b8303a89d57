"""Backbone features of labelled videos, computed once and cached on disk.

The backbones are frozen in head-only training, so what they compute from a clip never changes:
each clip of each video goes through them once, and training then runs only the gates and heads
(milliseconds per clip instead of the backbones' seconds to minutes).

What a clip's features are depends on the video's content, the backbone weights, the model
configuration and how the clip was sampled; the cache is keyed by exactly that:

    CACHE/<setup>/<video sha256[:2]>/<video sha256>/<clip>.npz

``<setup>`` is a digest of the cache format, the model configuration, the two weight files'
sha256 and the view settings (``setup.json`` in that folder says what it stands for). ``<clip>``
is ``mid`` for the deterministic clip (middle offsets, what ``cover-run`` scores, used for
validation) or ``r<seed>-<k>`` for the ``k``-th random clip of sampling seed ``<seed>``
(upstream's random temporal and spatial offsets, the training augmentation). Renaming or moving
a video keeps its cache; changing one byte of it does not.

Each file is written atomically once its clip is computed, so an interrupted pass keeps every
finished clip and the next run computes only the rest. A cache file that cannot be read (a
foreign or damaged file) is computed again; files are loaded with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from cover_engine.runtime.constants import BRANCHES, ViewSpec
from cover_engine.runtime.durable import write_atomic
from cover_engine.runtime.engines.manifest import jsonable
from cover_engine.runtime.hashing import sha256_file
from cover_engine.runtime.errors import CoverError, InputError
from cover_engine.runtime.views.assemble import load_views
from ..cover import COVER

__all__ = ["CACHE_FORMAT", "MID", "ClipFeatures", "FeatureCache", "random_clip", "content_hash",
           "extract_features", "default_cache_dir"]

#: Version of the cache layout and file contents; a change gives a new ``<setup>`` folder.
CACHE_FORMAT = 1
#: The deterministic clip.
MID = "mid"

Log = Callable[[str], None]


def random_clip(seed: int, k: int) -> str:
    """Id of the ``k``-th random clip sampled with ``seed`` (its views: ``clip_rng(seed, k)``)."""
    return f"r{seed}-{k}"


def _parse_clip(clip: str) -> Optional[tuple[int, int]]:
    """``(seed, k)`` of a random clip id, None for :data:`MID`."""
    if clip == MID:
        return None
    seed, k = clip[1:].split("-")
    return int(seed), int(k)


def content_hash(path: Union[str, Path]) -> str:
    """sha256 of a video file's bytes: its identity in the cache."""
    return sha256_file(path)


def default_cache_dir() -> Path:
    """``$COVER_HOME/features``."""
    from cover_engine.runtime.fetch import cache_dir

    return cache_dir() / "features"


@dataclass(frozen=True)
class ClipFeatures:
    """What the frozen backbones make of one clip (float32): semantic ``(C, T)`` per-frame CLIP
    features, technical and aesthetic ``(C, T', h, w)`` feature maps."""

    semantic: np.ndarray
    technical: np.ndarray
    aesthetic: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {b: getattr(self, b) for b in BRANCHES}


class FeatureCache:
    """The cache folder of one backbone setup (see the module docstring)."""

    def __init__(self, root: Union[str, Path], setup: Mapping):
        self.setup = jsonable(dict(setup, format=CACHE_FORMAT))
        text = json.dumps(self.setup, sort_keys=True)
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.dir = Path(root) / self.digest
        info = self.dir / "setup.json"
        if not info.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(info, json.dumps(self.setup, indent=1, sort_keys=True).encode())

    def path(self, video: str, clip: str) -> Path:
        return self.dir / video[:2] / video / f"{clip}.npz"

    def get(self, video: str, clip: str) -> Optional[ClipFeatures]:
        """The cached features, or None when absent or unreadable."""
        path = self.path(video, clip)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {b: np.asarray(data[b], np.float32) for b in BRANCHES}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        if arrays["semantic"].ndim != 2 or arrays["technical"].ndim != 4 \
                or arrays["aesthetic"].ndim != 4:
            return None
        return ClipFeatures(**arrays)

    def put(self, video: str, clip: str, feats: ClipFeatures) -> Path:
        path = self.path(video, clip)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **feats.arrays())
        write_atomic(path, buf.getvalue())
        return path


def cache_setup(cfg_dict: Mapping, weights: Mapping, specs: Mapping[str, ViewSpec]) -> dict:
    """What a cache folder's features depend on besides the video and the clip."""
    return {"config": dict(cfg_dict), "weights": dict(weights),
            "views": {k: v.to_dict() for k, v in specs.items()}, "dtype": "float32"}


@torch.inference_mode()
def backbone_features(model: COVER, views: Mapping[str, np.ndarray],
                      device: torch.device) -> list[ClipFeatures]:
    """Run the three backbones on a batch of normalised views ``(clips, 3, T, H, W)``."""
    model.eval()
    t = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)).to(device)
         for k, v in views.items()}
    sem = model.semantic_features(t["semantic"]).float().cpu().numpy()
    tech = model.technical_features(t["technical"]).float().cpu().numpy()
    aes = model.aesthetic_features(t["aesthetic"]).float().cpu().numpy()
    return [ClipFeatures(sem[i], tech[i], aes[i]) for i in range(sem.shape[0])]


def _views_for(path: Path, specs: Mapping[str, ViewSpec], clips: Sequence[str]):
    """Normalised views of the given clip ids, decoded once per sampling mode."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if MID in clips:
        views, _ = load_views(path, specs)
        out[MID] = {k: v[0] for k, v in views.items()}
    randoms = [c for c in clips if c != MID]
    by_seed: dict[int, list[tuple[str, int]]] = {}
    for c in randoms:
        seed, k = _parse_clip(c)
        by_seed.setdefault(seed, []).append((c, k))
    for seed, wanted in by_seed.items():
        count = max(k for _, k in wanted) + 1  # each clip's draws do not depend on the count
        views, _ = load_views(path, specs, seed=seed, clips=count)
        for c, k in wanted:
            out[c] = {name: v[k] for name, v in views.items()}
    return [out[c] for c in clips]


@dataclass
class FeaturePass:
    """Outcome of :func:`extract_features`."""

    features: dict[tuple[str, str], ClipFeatures]   # (video sha256, clip) -> features
    hashes: dict[str, str]                          # video name -> sha256
    failed: list[tuple[str, str]]                   # (video name, why) of unreadable videos
    computed: int = 0                               # clips run through the backbones now
    cached: int = 0                                 # clips found in the cache
    seconds: float = 0.0


def extract_features(model: COVER, cache: FeatureCache, videos: Mapping[str, Path],
                     clips: Mapping[str, Sequence[str]], specs: Mapping[str, ViewSpec], *,
                     device: Union[str, torch.device] = "cpu", progress: Optional[bool] = None,
                     log: Log = print) -> FeaturePass:
    """Features of ``clips[name]`` for every ``videos[name]``, from the cache or computed now.

    A video that cannot be read or decoded is listed in ``failed`` and skipped (its other clips
    are not attempted); anything else wrong (weights, device) is raised.
    """
    from tqdm import tqdm

    device = torch.device(device)
    started = time.perf_counter()
    result = FeaturePass({}, {}, [])
    quiet = None if progress is None else not progress
    for name in tqdm(list(videos), desc="features", unit="video", disable=quiet):
        path = Path(videos[name])
        wanted = list(dict.fromkeys(clips[name]))
        try:
            digest = content_hash(path)
        except OSError as exc:
            result.failed.append((name, f"cannot read ({exc.strerror or exc})"))
            continue
        result.hashes[name] = digest
        todo = []
        for clip in wanted:
            feats = cache.get(digest, clip)
            if feats is None:
                todo.append(clip)
            else:
                result.features[digest, clip] = feats
                result.cached += 1
        if not todo:
            continue
        try:
            views = _views_for(path, specs, todo)
        except CoverError as exc:
            if not isinstance(exc, InputError):
                raise
            result.failed.append((name, _reason(exc, path)))
            continue
        except (ValueError, OSError, RuntimeError, EOFError) as exc:  # decoder trouble
            result.failed.append((name, f"{type(exc).__name__}: {_reason(exc, path)}"))
            continue
        batch = {b: np.stack([v[b] for v in views]) for b in BRANCHES}
        for clip, feats in zip(todo, backbone_features(model, batch, device)):
            cache.put(digest, clip, feats)
            result.features[digest, clip] = feats
            result.computed += 1
    result.seconds = time.perf_counter() - started
    return result


def _reason(exc: Exception, path: Path) -> str:
    """The error's first line without a leading ``path:`` (the caller names the video)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def needed_clips(names: Iterable[str], train: set[str], clips_per_video: int,
                 sample_seed: int) -> dict[str, list[str]]:
    """Clip ids each video needs: :data:`MID` for all (validation and the clip-0 of training),
    plus ``clips_per_video - 1`` random clips for videos that are trained on in some split."""
    extra = [random_clip(sample_seed, k) for k in range(max(clips_per_video - 1, 0))]
    return {n: [MID] + (extra if n in train else []) for n in names}
