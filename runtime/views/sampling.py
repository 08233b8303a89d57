"""Temporal sampling: which frames each view takes (upstream ``UnifiedFrameSampler``).

A video of ``n`` frames is cut into ``t_frag`` segments of ``n // t_frag`` frames. Segment ``i``
contributes ``fsize_t = clip_len // t_frag`` frames, ``frame_interval`` apart, starting at
``i * (n // t_frag) + r_i``; indices wrap modulo ``n``, so short videos repeat frames.

The offsets ``r_i`` lie in ``[0, high)`` with ``high = n // t_frag - fsize_t * frame_interval``
(all 0 when that range is empty). Upstream draws them at random even at test time, so its scores
do not repeat. Here the default is deterministic: the middle of the range, ``high // 2``. With
``clips`` clips, clip ``k`` takes the middle of the ``k``-th of ``clips`` equal parts of the range
(``(2k + 1) * high // (2 * clips)``): the clips spread evenly over the allowed offsets, and one
clip is exactly the middle rule. Passing a numpy ``Generator`` gives upstream's random mode
(uniform in ``[0, high)``), reproducible from a seed through :func:`clip_rng`. The spatial
offsets of fragments (``geometry``) use the same rule through :func:`choose_offsets`.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

import numpy as np

from cover_engine.runtime.constants import ViewSpec


def clip_rng(seed: Optional[int], clip: int) -> Optional[np.random.Generator]:
    """The random generator of clip ``clip`` for ``seed`` (``None``: deterministic sampling).

    Each clip gets its own stream, so a clip's draws do not depend on how many clips are taken.
    """
    return None if seed is None else np.random.default_rng((seed, clip))


def choose_offsets(high: int, shape, *, rng: Optional[np.random.Generator] = None,
                   clip: int = 0, clips: int = 1) -> np.ndarray:
    """Offsets in ``[0, high)`` of the given shape (``int64``; all 0 when ``high <= 0``)."""
    if not 0 <= clip < clips:
        raise ValueError(f"clip {clip} out of range for {clips} clips")
    if high <= 0:
        return np.zeros(shape, np.int64)
    if rng is not None:
        return rng.integers(0, high, size=shape, dtype=np.int64)
    return np.full(shape, (2 * clip + 1) * high // (2 * clips), np.int64)


def frame_indices(num_frames: int, spec: ViewSpec, *, rng: Optional[np.random.Generator] = None,
                  clip: int = 0, clips: int = 1) -> np.ndarray:
    """Frame indices (``int64``, ``t_frag * fsize_t`` of them, in view order) of one clip."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    segment = num_frames // spec.t_frag
    high = segment - spec.fsize_t * spec.frame_interval
    offsets = choose_offsets(high, spec.t_frag, rng=rng, clip=clip, clips=clips)
    starts = np.arange(spec.t_frag, dtype=np.int64) * segment + offsets
    steps = np.arange(spec.fsize_t, dtype=np.int64) * spec.frame_interval
    return (starts[:, None] + steps[None, :]).reshape(-1) % num_frames


def view_indices(num_frames: int, specs: Mapping[str, ViewSpec], *,
                 rng: Optional[np.random.Generator] = None, clip: int = 0, clips: int = 1,
                 is_image: bool = False) -> dict[str, np.ndarray]:
    """:func:`frame_indices` of every view, drawn in ``specs`` order (an image: ``[0]`` each)."""
    if is_image:
        return {name: np.zeros(1, np.int64) for name in specs}
    return {name: frame_indices(num_frames, spec, rng=rng, clip=clip, clips=clips)
            for name, spec in specs.items()}


def needed_frames(*index_sets: Mapping[str, np.ndarray] | Iterable[np.ndarray]) -> np.ndarray:
    """Sorted unique frame indices used by any of the given views and clips (decoded once each)."""
    arrays = [np.asarray(a, np.int64).reshape(-1) for s in index_sets
              for a in (s.values() if isinstance(s, Mapping) else s)]
    return np.unique(np.concatenate(arrays)) if arrays else np.zeros(0, np.int64)
