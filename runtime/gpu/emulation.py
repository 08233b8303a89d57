"""The view kernels' maths in numpy: same tables, same float32 operations in the same order,
same rounding.

Not part of the fast path. The tests hold :func:`emulate_view` to the CPU views exactly, which
checks the kernels' arithmetic on machines without a GPU; on a GPU they hold the kernels to it.
Frames come in the kernels' memory layout (:class:`HostFrames`, made by :func:`semi_planar`
from what PyAV decodes) or already in RGB (:class:`RgbFrames`, to check the geometry alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from cover_engine.runtime.gpu.tables import ViewTables
from cover_engine.runtime.media.colour import SwsConversion, YuvToRgb, sws_levels
from cover_engine.runtime.views.resize import fma32

__all__ = ["HostFrames", "RgbFrames", "semi_planar", "emulate_levels", "emulate_view"]


@dataclass(frozen=True)
class HostFrames:
    """Decoded frames in the kernels' memory layout, on the host: per frame a luma plane
    ``(H, W)`` and an interleaved chroma plane ``(ceil(H/2), 2 * ceil(W/2))`` of code values as
    stored (uint8 NV12, or uint16 P016 with the value in the high bits)."""

    luma: Sequence[np.ndarray]
    chroma: Sequence[np.ndarray]
    sample_shift: int
    conv: Union[YuvToRgb, SwsConversion]

    def rgb(self, slot: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """RGB levels, float32 ``rows.shape + (3,)``, of pixels ``(rows, cols)`` (cover_rgb)."""
        f32, c = np.float32, self.conv
        luma, chroma = self.luma[slot], self.chroma[slot]
        rows, cols = np.broadcast_arrays(rows, cols)
        if isinstance(c, SwsConversion):  # cover_rgb_decord: the CPU formula on NV12 / P016
            shift = self.sample_shift
            levels = sws_levels(c, luma[rows, cols] >> shift,
                                lambda k, rr, cc: chroma[rr, cc * 2 + k] >> shift, rows, cols)
            return levels.astype(f32)
        Y = (luma[rows, cols] >> self.sample_shift).astype(f32)
        U = (chroma[rows >> 1, (cols >> 1) * 2] >> self.sample_shift).astype(f32)
        V = (chroma[rows >> 1, (cols >> 1) * 2 + 1] >> self.sample_shift).astype(f32)
        y = (Y - f32(c.y_offset)) * f32(c.y_scale)
        u = (U - f32(c.c_offset)) * f32(c.c_scale)
        v = (V - f32(c.c_offset)) * f32(c.c_scale)
        channels = (y + f32(c.r_v) * v, (y - f32(c.g_u) * u) - f32(c.g_v) * v, y + f32(c.b_u) * u)
        return np.stack([_level(ch) for ch in channels], axis=-1)


@dataclass(frozen=True)
class RgbFrames:
    """Frames already in RGB (the reference vectors' form), to check the geometry alone."""

    frames: Sequence[np.ndarray]

    def rgb(self, slot: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.frames[slot][rows, cols].astype(np.float32)


def semi_planar(y: np.ndarray, u: np.ndarray, v: np.ndarray, bit_depth: int = 8
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Planar 4:2:0 code values -> NV12 (8 bit) or P016 (more) luma and chroma planes, and the
    shift the kernels undo; what NVDEC hands over, made from what PyAV decodes."""
    chroma = np.stack([u, v], axis=-1).reshape(u.shape[0], 2 * u.shape[1])
    if bit_depth == 8:
        return y.astype(np.uint8), chroma.astype(np.uint8), 0
    shift = 16 - bit_depth
    return (y.astype(np.uint16) << shift), (chroma.astype(np.uint16) << shift), shift


def _level(value: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(value), 0, 255).astype(np.float32)


def _bilinear(frames, slot: int, r0, r1, wy1, c0, c1, wx1, prescale: bool) -> np.ndarray:
    """Kernel cover_bilinear over 2-D arrays of taps (rows and columns broadcast together)."""
    f32 = np.float32
    wy0, wx0 = (f32(1) - wy1)[..., None], (f32(1) - wx1)[..., None]
    wy1, wx1 = wy1[..., None], wx1[..., None]
    a, b = frames.rgb(slot, r0, c0), frames.rgb(slot, r0, c1)
    c, d = frames.rgb(slot, r1, c0), frames.rgb(slot, r1, c1)
    if prescale:
        a, b, c, d = (x / f32(255) for x in (a, b, c, d))
    top = fma32(a, wx0, b * wx1)
    bottom = fma32(c, wx0, d * wx1)
    return fma32(top, wy0, bottom * wy1)


def emulate_levels(tables: ViewTables, frames) -> np.ndarray:
    """What the kernel computes before normalising: 8-bit levels ``(clips, 3, T, H, W)`` uint8.
    ``frames`` is a :class:`HostFrames` (or :class:`RgbFrames`) indexed by frame slot."""
    spec = tables.spec
    out = np.zeros((len(tables.frame_of), spec.out_h, spec.out_w, 3), np.float32)
    done: dict[tuple, int] = {}  # a frame sampled the same way twice is computed once
    for k, slot in enumerate(tables.frame_of.tolist()):
        clip, t = divmod(k, tables.frames)
        key = (slot,) if spec.kind == "resize" else \
            (slot, tables.origins[clip, t // tables.aligned].tobytes())
        if key in done:
            out[k] = out[done[key]]
            continue
        done[key] = k
        if spec.kind == "resize":
            r, c = tables.rows, tables.cols
            grid = np.ix_(np.arange(spec.out_h), np.arange(spec.out_w))
            value = _bilinear(frames, slot, r.index0[grid[0]], r.index1[grid[0]],
                              r.weight[grid[0]], c.index0[grid[1]], c.index1[grid[1]],
                              c.weight[grid[1]], prescale=False)
            out[k] = _level(value)
            continue
        origin = tables.origins[clip, t // tables.aligned]
        rows = np.repeat(np.repeat(origin[0], spec.fsize_h, 0), spec.fsize_w, 1) + \
            np.tile(np.arange(spec.fsize_h), spec.fragments_h)[:, None]
        cols = np.repeat(np.repeat(origin[1], spec.fsize_h, 0), spec.fsize_w, 1) + \
            np.tile(np.arange(spec.fsize_w), spec.fragments_w)[None, :]
        if tables.upsample:
            r, c = tables.rows, tables.cols
            value = _bilinear(frames, slot, r.index0[rows], r.index1[rows], r.weight[rows],
                              c.index0[cols], c.index1[cols], c.weight[cols], prescale=True)
            out[k] = np.trunc(np.clip(value * np.float32(255), 0, 255))
        else:
            out[k] = frames.rgb(slot, rows, cols)
    levels = out.astype(np.uint8).reshape(tables.clips, tables.frames, spec.out_h, spec.out_w, 3)
    return np.ascontiguousarray(levels.transpose(0, 4, 1, 2, 3))


def emulate_view(tables: ViewTables, frames) -> np.ndarray:
    """The kernel's output: normalised float32 ``(clips, 3, T, H, W)``."""
    levels = emulate_levels(tables, frames).astype(np.float32)
    mean = tables.norm[:3].reshape(1, 3, 1, 1, 1)
    std = tables.norm[3:].reshape(1, 3, 1, 1, 1)
    return (levels - mean) / std
