"""Bilinear resampling of uint8 RGB frames, bit-compatible with what COVER was trained on.

Both functions evaluate, in float32 and in this order (torch's CPU kernel for float inputs:
width first, then height, each step one fused multiply-add):

    top    = fma(x[i0, j0], 1 - wx, x[i0, j1] * wx)
    bottom = fma(x[i1, j0], 1 - wx, x[i1, j1] * wx)
    out    = fma(top, 1 - wy, bottom * wy)

with the taps of ``geometry.AxisTable``. This order and the fused steps reproduce upstream's
reference views bit for bit (plain multiply-then-add misses up to 1e-4 of the values, by one
level); a CUDA kernel gets the same numbers with ``__fmaf_rn``. numpy has no fma: it is computed
in float64 (the product of two float32 is exact there) and rounded to float32 once more, which
can differ from a true fma only when that second rounding meets an exact float32 tie.

The two functions differ in what surrounds it:

* :func:`resize` is torchvision 0.14's tensor ``Resize``: the frame is cast to float32 as is,
  and the result is rounded half to even (``torch.round``) and cast back to uint8 (no clamp is
  needed: bilinear stays within 0..255);
* :func:`upsample` is upstream's small-frame path: ``x / 255`` in float32, interpolate, ``* 255``,
  then ``.type_as(uint8)``, which truncates (so a level can be lost, exactly as upstream).

Only the source pixels the taps touch are read, through :func:`take`; a frame can be a
``(H, W, 3)`` array or any object with ``take(rows, cols)`` (a decoded frame converts just those
pixels to RGB). Cost is proportional to the output, not the source: a 4K frame is cheap.
"""
from __future__ import annotations

import numpy as np

from cover_engine.runtime.views.geometry import AxisTable


def take(frame, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The ``(len(rows), len(cols), 3)`` uint8 pixels at the given sorted rows and columns."""
    if isinstance(frame, np.ndarray):
        return frame[np.ix_(rows, cols)]
    return frame.take(rows, cols)


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, as CUDA's ``__fmaf_rn``: the float32 product is exact
    in float64, the sum is rounded there and then to float32 (which differs from a true fma only
    when that second rounding meets an exact float32 tie). The GPU kernels' emulation uses this
    very function."""
    out = np.multiply(a, b.astype(np.float64), dtype=np.float64)
    out += c
    return out.astype(np.float32)


def _interpolate(frame, rows: AxisTable, cols: AxisTable, prescale: bool) -> np.ndarray:
    need_r = np.unique(np.concatenate([rows.index0, rows.index1]))
    need_c = np.unique(np.concatenate([cols.index0, cols.index1]))
    x = take(frame, need_r, need_c).astype(np.float32)
    if prescale:
        x /= np.float32(255)
    c0, c1 = np.searchsorted(need_c, cols.index0), np.searchsorted(need_c, cols.index1)
    wx1, wx0 = cols.weight[None, :, None], cols.weight0[None, :, None]
    wy1, wy0 = rows.weight[:, None, None], rows.weight0[:, None, None]
    x0 = np.take(x, np.searchsorted(need_r, rows.index0), axis=0)
    x1 = np.take(x, np.searchsorted(need_r, rows.index1), axis=0)
    top = fma32(np.take(x0, c0, axis=1), wx0, np.take(x0, c1, axis=1) * wx1)
    bottom = fma32(np.take(x1, c0, axis=1), wx0, np.take(x1, c1, axis=1) * wx1)
    return fma32(top, wy0, bottom * wy1)


def resize(frame, rows: AxisTable, cols: AxisTable) -> np.ndarray:
    """torchvision 0.14 bilinear ``Resize`` of a uint8 frame, ``(len(rows), len(cols), 3)`` uint8."""
    out = np.rint(_interpolate(frame, rows, cols, prescale=False))
    return np.clip(out, 0, 255).astype(np.uint8)


def upsample(frame, rows: AxisTable, cols: AxisTable) -> np.ndarray:
    """Upstream's ``(interpolate(x / 255) * 255).type_as(x)`` (truncating) of a uint8 frame."""
    out = _interpolate(frame, rows, cols, prescale=True) * np.float32(255)
    return np.clip(out, 0, 255).astype(np.uint8)
