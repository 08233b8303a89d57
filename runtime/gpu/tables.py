"""The tables a view kernel reads, made from the CPU path's own view plans.

The CPU path (:mod:`cover_engine.runtime.views.assemble`) plans every frame index and crop
position before decoding (:func:`~cover_engine.runtime.views.assemble.plan_views`);
:func:`view_tables` turns those very plans into what the kernels of ``kernels/views.cu`` read --
frame slots, bilinear taps (:mod:`cover_engine.runtime.views.geometry`), crop origins and
normalisation -- so the kernels make no sampling decision of their own. Pure numpy: no GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from cover_engine.runtime.constants import ViewSpec
from cover_engine.runtime.views.assemble import ViewPlan
from cover_engine.runtime.views.geometry import AxisTable, resize_table

__all__ = ["ViewTables", "view_tables"]


@dataclass(frozen=True)
class ViewTables:
    """Everything one view kernel reads besides the frames, for all clips of a batch.

    ``rows``/``cols`` are the resize taps (resize views) or the upsampling taps over the whole
    upsampled frame (fragments views of small frames; empty otherwise).
    """

    spec: ViewSpec
    frames: int                          # T, view frames per clip
    frame_of: np.ndarray                 # int32 (clips * T,): frame slot of each view frame
    rows: AxisTable
    cols: AxisTable
    origins: Optional[np.ndarray]        # int32 (clips, T // aligned, 2, fh, fw), fragments only
    aligned: int
    upsample: bool
    norm: np.ndarray                     # float32 (6,): mean rgb, std rgb

    @property
    def clips(self) -> int:
        return len(self.frame_of) // self.frames

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """The view batch it makes, ``(clips, 3, T, H, W)``."""
        return (self.clips, 3, self.frames, self.spec.out_h, self.spec.out_w)


def _empty_table() -> AxisTable:
    return AxisTable(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def view_tables(plans: Sequence[ViewPlan], slot_of: Mapping[int, int], height: int,
                width: int) -> ViewTables:
    """Kernel tables of one view over clips ``plans`` (one
    :class:`~cover_engine.runtime.views.assemble.ViewPlan` per clip, all of the same view);
    ``slot_of`` maps a frame index to its position among decoded frames."""
    spec = plans[0].spec
    frames = len(plans[0].indices)
    frame_of = np.array([slot_of[int(i)] for p in plans for i in p.indices], np.int32)
    norm = np.array(list(spec.mean) + list(spec.std), np.float32)
    if spec.kind == "resize":
        return ViewTables(spec, frames, frame_of, resize_table(height, spec.out_h),
                          resize_table(width, spec.out_w), None, 1, False, norm)
    grid = plans[0].grid
    if (grid.height, grid.width) != (height, width):
        raise ValueError(f"plan made for {grid.height}x{grid.width} frames, frames are "
                         f"{height}x{width}")
    rows, cols = grid.tables() if grid.upsample else (_empty_table(), _empty_table())
    origins = np.stack([p.origins for p in plans]).astype(np.int32)
    return ViewTables(spec, frames, frame_of, rows, cols, origins, plans[0].aligned,
                      bool(grid.upsample), norm)
