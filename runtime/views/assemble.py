"""COVER's views of a video or image, as upstream's ``spatial_temporal_view_decomposition``.

* ``resize`` views (semantic, aesthetic): every sampled frame resized to ``size_h x size_w``
  (torchvision 0.14 bilinear, no antialiasing, aspect ratio not kept);
* ``fragments`` views (technical): ``fragments_h x fragments_w`` crops of ``fsize_h x fsize_w``
  raw pixels (``geometry``), the crop positions shared by each run of ``aligned`` view frames;
* an image is a one-frame view (``T = 1``, ``aligned = 1``) of every kind.

Building is split in two. :func:`plan_views` fixes every frame index and crop position before
anything is decoded (so the decoder knows what to keep, and a GPU path can reuse the plan);
:class:`ViewAssembler` then fills the views as frames arrive, in any order, so that frames are
never all held at once. Views are uint8 ``(3, T, H, W)`` until :func:`normalise`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

import numpy as np

from cover_engine.runtime.constants import DEFAULT_COLOUR, ViewSpec
from cover_engine.runtime.media.decode import (MediaInfo, ShortVideoError, applies_rotation,
                                               iter_frames, probe, quarter_turns)
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.views.geometry import FragmentGrid, fragment_grid, fragment_maps, fragment_origins, resize_table
from cover_engine.runtime.views.resize import resize, take, upsample
from cover_engine.runtime.views.sampling import choose_offsets, clip_rng, needed_frames, view_indices


@dataclass(frozen=True)
class ViewPlan:
    """Where one view of one clip samples."""

    spec: ViewSpec
    indices: np.ndarray                    # int64 (T,): the frame behind each view frame
    grid: Optional[FragmentGrid] = None    # fragments views only
    origins: Optional[np.ndarray] = None   # int64 (T // aligned, 2, fragments_h, fragments_w)
    aligned: int = 1                       # view frames sharing one set of crop positions


def plan_views(num_frames: int, height: int, width: int, specs: Mapping[str, ViewSpec], *,
               rng: Optional[np.random.Generator] = None, clip: int = 0, clips: int = 1,
               is_image: bool = False) -> dict[str, ViewPlan]:
    """Frame indices (all views, in ``specs`` order) then crop positions (fragments views) of
    clip ``clip`` of ``clips``; random when ``rng`` is given, else deterministic (``sampling``)."""
    indices = view_indices(num_frames, specs, rng=rng, clip=clip, clips=clips, is_image=is_image)
    plans: dict[str, ViewPlan] = {}
    for name, spec in specs.items():
        if spec.kind == "resize":
            plans[name] = ViewPlan(spec, indices[name])
            continue
        if spec.kind != "fragments":
            raise ValueError(f"view {name}: unknown kind {spec.kind!r}")
        frames = len(indices[name])
        aligned = 1 if frames == 1 else spec.aligned  # upstream: one-frame views are aligned 1
        if aligned < 1 or frames % aligned:
            raise ValueError(f"view {name}: {frames} frames do not split into runs of {aligned}")
        grid = fragment_grid(height, width, spec)
        shape = (spec.fragments_h, spec.fragments_w, frames // aligned)
        offsets_h = choose_offsets(grid.range_h, shape, rng=rng, clip=clip, clips=clips)
        offsets_w = choose_offsets(grid.range_w, shape, rng=rng, clip=clip, clips=clips)
        origins = np.stack([np.stack(fragment_origins(grid, offsets_h[..., c], offsets_w[..., c]))
                            for c in range(shape[2])])
        plans[name] = ViewPlan(spec, indices[name], grid, origins, aligned)
    return plans


def _size(frame) -> tuple[int, int]:
    return frame.shape[:2] if isinstance(frame, np.ndarray) else (frame.height, frame.width)


class ViewAssembler:
    """Fills the views of one plan from frames given one at a time (``add``)."""

    def __init__(self, plans: Mapping[str, ViewPlan]):
        self.plans = dict(plans)
        self.needed = needed_frames({n: p.indices for n, p in self.plans.items()})
        self._views = {n: np.zeros((len(p.indices), p.spec.out_h, p.spec.out_w, 3), np.uint8)
                       for n, p in self.plans.items()}
        self._filled = {n: np.zeros(len(p.indices), bool) for n, p in self.plans.items()}
        self._maps = {n: [fragment_maps(ys, xs, p.spec.fsize_h, p.spec.fsize_w)
                          for ys, xs in p.origins]
                      for n, p in self.plans.items() if p.grid is not None}

    def add(self, index: int, frame) -> None:
        """Sample frame ``index`` (``(H, W, 3)`` uint8 RGB, or a ``decode.Frame``) into every
        view position that uses it."""
        for name, plan in self.plans.items():
            positions = np.flatnonzero(plan.indices == index)
            if not len(positions):
                continue
            if plan.grid is None:
                h, w = _size(frame)
                self._views[name][positions] = resize(frame, resize_table(h, plan.spec.out_h),
                                                      resize_table(w, plan.spec.out_w))
            else:
                if _size(frame) != (plan.grid.height, plan.grid.width):
                    raise ValueError(f"frame {index} is {_size(frame)}, the plan was made for "
                                     f"{(plan.grid.height, plan.grid.width)}")
                for run in np.unique(positions // plan.aligned):
                    self._views[name][positions[positions // plan.aligned == run]] = \
                        self._fragments(frame, plan, *self._maps[name][run])
            self._filled[name][positions] = True

    @staticmethod
    def _fragments(frame, plan: ViewPlan, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        need_r, need_c = np.unique(rows), np.unique(cols)
        if plan.grid.upsample:
            taps_r, taps_c = plan.grid.tables()
            patch = upsample(frame, taps_r.select(need_r), taps_c.select(need_c))
        else:
            patch = take(frame, need_r, need_c)
        return patch[np.searchsorted(need_r, rows), np.searchsorted(need_c, cols)]

    def views(self) -> dict[str, np.ndarray]:
        """The finished views, uint8 ``(3, T, H, W)``."""
        for name, filled in self._filled.items():
            if not filled.all():
                missing = sorted(set(self.plans[name].indices[~filled].tolist()))
                raise ValueError(f"view {name}: frames {missing} were never added")
        return {n: np.ascontiguousarray(v.transpose(3, 0, 1, 2)) for n, v in self._views.items()}


def build_views(frames: Mapping[int, object], num_frames: int, specs: Mapping[str, ViewSpec], *,
                rng: Optional[np.random.Generator] = None, clip: int = 0, clips: int = 1,
                is_image: bool = False) -> dict[str, np.ndarray]:
    """Views uint8 ``(3, T, H, W)`` of one clip from decoded frames ``{index: (H, W, 3) uint8}``
    (at least those :func:`plan_views` picks for this ``num_frames``, ``rng`` state and clip)."""
    if not frames:
        raise ValueError("no frames given")
    height, width = _size(next(iter(frames.values())))
    assembler = ViewAssembler(plan_views(num_frames, height, width, specs, rng=rng, clip=clip,
                                         clips=clips, is_image=is_image))
    for index in assembler.needed.tolist():
        if index not in frames:
            raise ValueError(f"frame {index} is needed but was not given")
        assembler.add(index, frames[index])
    return assembler.views()


def normalise(view: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """``(view - mean) / std`` per RGB channel, float32 ``(3, T, H, W)`` (upstream's order)."""
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1, 1)
    return (view.astype(np.float32) - mean) / std


def load_views(path, specs: Mapping[str, ViewSpec], *, seed: Optional[int] = None,
               clips: int = 1, rotate: Optional[bool] = None, colour: str = DEFAULT_COLOUR
               ) -> tuple[dict[str, np.ndarray], MediaInfo]:
    """Normalised views float32 ``(clips, 3, T, H, W)`` of a video or image file, and its info.

    ``seed`` None samples deterministically (middle offsets; clips spread evenly), an integer
    samples at random, reproducibly. Every needed frame is decoded once for all views and
    clips. A file with fewer decodable frames than its header claims is sampled again from the
    frames it has. ``colour`` picks the YUV -> RGB conversion (``decord``: upstream's frames
    exactly); ``rotate`` (default: as the colour mode's reference, see
    :func:`~.decode.applies_rotation`) applies rotation metadata.
    """
    if clips < 1:
        raise ValueError("clips must be at least 1")
    rotate = applies_rotation(rotate, colour)
    info = probe(path)
    try:
        return _load(path, info, specs, seed, clips, rotate, colour=colour), info
    except ShortVideoError as exc:
        info = replace(info, num_frames=exc.decoded, counted=True)
    try:  # a damaged file: number frames as a plain decode from the start does (no seeking)
        return _load(path, info, specs, seed, clips, rotate, seek=False, colour=colour), info
    except ShortVideoError as exc:
        raise InputError(f"{path}: frame count changes between reads ({exc})") from None


def frame_size(info: MediaInfo, rotate: bool, colour: str = DEFAULT_COLOUR) -> tuple[int, int]:
    """``(height, width)`` of the frames ``iter_frames`` delivers: turned a quarter when
    ``rotate`` applies a rotation the colour mode's reference turns by (plans need the size)."""
    turned = quarter_turns(info.rotation) % 2 if colour == "decord" else info.rotation % 180 == 90
    return (info.width, info.height) if rotate and turned else (info.height, info.width)


def _load(path, info: MediaInfo, specs, seed, clips, rotate,
          seek: bool = True, colour: str = DEFAULT_COLOUR) -> dict[str, np.ndarray]:
    height, width = frame_size(info, rotate, colour)
    assemblers = [ViewAssembler(plan_views(info.num_frames, height, width, specs,
                                           rng=clip_rng(seed, k), clip=k, clips=clips,
                                           is_image=info.is_image)) for k in range(clips)]
    for index, frame in iter_frames(path, needed_frames([a.needed for a in assemblers]),
                                    rotate=rotate, seek=seek, colour=colour):
        for assembler in assemblers:
            assembler.add(index, frame)
    views = [a.views() for a in assemblers]
    return {name: np.stack([normalise(v[name], spec) for v in views])
            for name, spec in specs.items()}
