"""Spatial geometry of COVER's views, as plain integers and numpy tables.

Everything here is pure and shared by the numpy path (``resize``, ``views``) and the CUDA kernels,
which take the very same tables, so both sample the same pixels with the same weights.

Bilinear sampling is expressed per axis as an :class:`AxisTable`: output position ``o`` reads
input positions ``index0[o]`` and ``index1[o]`` with weights ``1 - weight[o]`` and ``weight[o]``
(all float32, as torch computes them on CPU for float inputs, ``align_corners=False``):

    src = max(scale * (o + 0.5) - 0.5, 0)        # float32
    index0 = min(int(src), n_in - 1);  index1 = index0 + (index0 < n_in - 1)
    weight = clamp(src - index0, 0, 1);  weight0 = 1 - weight
    (an axis whose size does not change is copied: index0 = index1 = o, weight = 0)

Two callers differ only in ``scale`` (source pixels per output pixel):

* torchvision 0.14 tensor ``Resize((h, w))`` (semantic and aesthetic views; bilinear, no
  antialiasing): ``scale = float32(n_in) / float32(n_out)``;
* ``F.interpolate(x, scale_factor=s, mode="bilinear")`` (upstream's upsampling of frames smaller
  than the fragment grid, ``recompute_scale_factor`` unset): the output size is
  ``int(n_in * s)`` (double) and the mapping uses the *given* factor,
  ``scale = float32(1.0 / s)``, not ``n_in / n_out``.

Fragments (technical view): a ``fragments_h x fragments_w`` grid over the frame; cell ``i`` starts
at ``min(n // fragments * i, n - fsize)`` and a ``fsize`` crop is taken at an offset in
``[0, n // fragments - fsize)`` inside it (0 when the cell is smaller than the crop). Frames with
a side smaller than ``fragments * fsize`` are first upsampled by ``1 / ratio``,
``ratio = min(h / (fragments_h * fsize_h), w / (fragments_w * fsize_w))``, yet upstream keeps the
grid of the *original* size, so fragments come from the top-left of the upsampled frame; this is
reproduced. Where the original side is smaller than ``fsize`` upstream's grid starts go negative
and it fails; here such an axis takes its grid from the upsampled size instead (well defined,
and the only case that differs from upstream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from cover_engine.runtime.constants import ViewSpec


class AxisTable(NamedTuple):
    """Bilinear taps along one axis (see the module docstring for the formula)."""

    index0: np.ndarray  # int64 (n_out,)
    index1: np.ndarray  # int64 (n_out,)
    weight: np.ndarray  # float32 (n_out,): weight of index1; index0 has 1 - weight

    @property
    def weight0(self) -> np.ndarray:
        return np.float32(1) - self.weight

    def select(self, positions: np.ndarray) -> "AxisTable":
        """The taps of some output positions only (to compute part of an output exactly)."""
        return AxisTable(self.index0[positions], self.index1[positions], self.weight[positions])


def axis_table(n_in: int, n_out: int, scale: np.float32) -> AxisTable:
    """Taps for ``n_out`` outputs from ``n_in`` inputs at ``scale`` source pixels per output."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} pixels to {n_out}")
    if n_in == n_out:
        same = np.arange(n_out, dtype=np.int64)
        return AxisTable(same, same.copy(), np.zeros(n_out, np.float32))
    scale = np.float32(scale)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    index0 = np.minimum(src.astype(np.int64), n_in - 1)
    index1 = index0 + (index0 < n_in - 1)
    weight = np.clip(src - index0.astype(np.float32), np.float32(0), np.float32(1))
    return AxisTable(index0, index1, weight.astype(np.float32))


def resize_table(n_in: int, n_out: int) -> AxisTable:
    """torchvision 0.14 tensor ``Resize``: scale ``float32(n_in) / float32(n_out)``."""
    return axis_table(n_in, n_out, np.float32(n_in) / np.float32(n_out))


def scale_factor_table(n_in: int, factor: float) -> AxisTable:
    """``F.interpolate(scale_factor=factor)``: ``int(n_in * factor)`` outputs at ``1 / factor``."""
    return axis_table(n_in, int(n_in * factor), np.float32(1.0 / factor))


def upsample_factor(height: int, width: int, spec: ViewSpec) -> Optional[float]:
    """Upstream's ``scale_factor = 1 / ratio`` for a frame smaller than the fragment grid, or None."""
    ratio = min(height / spec.out_h, width / spec.out_w)
    return 1 / ratio if ratio < 1 else None


@dataclass(frozen=True)
class FragmentGrid:
    """Where the fragments of one frame size come from (offsets inside cells are drawn apart)."""

    height: int                  # the original frame
    width: int
    upsample: Optional[float]    # upstream's scale_factor, None when the frame is big enough
    frame_h: int                 # the frame the fragments are cut from (upsampled or original)
    frame_w: int
    starts_h: np.ndarray         # int64 (fragments_h,): cell starts along y
    starts_w: np.ndarray         # int64 (fragments_w,)
    range_h: int                 # in-cell offsets are drawn from [0, range_h) (0: none)
    range_w: int

    def tables(self) -> tuple[AxisTable, AxisTable]:
        """Upsampling taps ``(rows, cols)`` for the whole upsampled frame (upsampled grids only)."""
        assert self.upsample is not None
        return (scale_factor_table(self.height, self.upsample),
                scale_factor_table(self.width, self.upsample))


def _grid_axis(n: int, n_up: int, fragments: int, fsize: int) -> tuple[np.ndarray, int]:
    n = n if n >= fsize else n_up  # upstream's grid would start before the frame: see docstring
    cell = n // fragments
    starts = np.array([min(cell * i, n - fsize) for i in range(fragments)], np.int64)
    return starts, max(cell - fsize, 0)


def fragment_grid(height: int, width: int, spec: ViewSpec) -> FragmentGrid:
    """Grid of a fragments view (``spec.kind == "fragments"``) over a ``height x width`` frame."""
    factor = upsample_factor(height, width, spec)
    up_h, up_w = (int(height * factor), int(width * factor)) if factor else (height, width)
    starts_h, range_h = _grid_axis(height, up_h, spec.fragments_h, spec.fsize_h)
    starts_w, range_w = _grid_axis(width, up_w, spec.fragments_w, spec.fsize_w)
    return FragmentGrid(height, width, factor, up_h, up_w, starts_h, starts_w, range_h, range_w)


def fragment_origins(grid: FragmentGrid, offsets_h: np.ndarray,
                     offsets_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners ``(ys, xs)``, each ``(fragments_h, fragments_w)``, of the crops."""
    return (grid.starts_h[:, None] + offsets_h, grid.starts_w[None, :] + offsets_w)


def fragment_maps(ys: np.ndarray, xs: np.ndarray, fsize_h: int,
                  fsize_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Source row and column, each ``(fragments_h * fsize_h, fragments_w * fsize_w)``, of every
    output pixel: ``(i * fsize_h + a, j * fsize_w + b)`` reads ``(ys[i, j] + a, xs[i, j] + b)``."""
    fh, fw = ys.shape
    block = np.ones((fsize_h, fsize_w), np.int64)
    rows = np.kron(ys, block) + np.tile(np.arange(fsize_h), fh)[:, None]
    cols = np.kron(xs, block) + np.tile(np.arange(fsize_w), fw)[None, :]
    return rows, cols
