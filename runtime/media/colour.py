"""YUV -> RGB conversion maths, shared by the numpy path and the CUDA NV12/P016 kernel.

A :class:`YuvToRgb` holds the float32 constants of one (matrix, range, bit depth); the
conversion of code values ``Y, U, V`` (any bit depth, stored as integers) to 8-bit RGB is

    y = (Y - y_offset) * y_scale
    u = (U - c_offset) * c_scale;  v = (V - c_offset) * c_scale
    R = y + r_v * v;  G = y - g_u * u - g_v * v;  B = y + b_u * u
    out = clamp(round_half_even(.), 0, 255)

all in float32. Chroma is taken at the nearest sample: pixel ``(r, c)`` reads chroma
``(r >> sy, c >> sx)`` for a plane subsampled by ``2**sy x 2**sx``, as FFmpeg's default unscaled
converter (what decord gave upstream) does; no chroma filtering, so a GPU kernel reading NV12 can
produce the very same numbers.

Matrices (``Kr, Kb``) follow ITU-T H.273: BT.601 (also BT.470BG, SMPTE 170M), BT.709, BT.2020
(non-constant luminance; constant luminance is approximated by it), SMPTE 240M and FCC. Limited
range maps ``16..235`` (luma) and ``16..240`` (chroma), scaled by ``2**(bits-8)``; full range maps
``0..2**bits-1``. What a stream does not signal is BT.601, limited range (``yuvj`` formats are
full range).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: Luma coefficients ``(Kr, Kb)`` by matrix name.
MATRICES: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
}

#: FFmpeg ``AVColorSpace`` values -> matrix name; anything else (unspecified, reserved) is BT.601.
_AVCOL_SPC = {1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020",
              10: "bt2020"}


def matrix_for(av_colorspace: int) -> str:
    """Matrix name for an FFmpeg ``AVColorSpace`` value (BT.601 when unsignalled or unknown)."""
    return _AVCOL_SPC.get(int(av_colorspace), "bt601")


@dataclass(frozen=True)
class YuvToRgb:
    """float32 constants of one YUV -> RGB conversion (formula in the module docstring)."""

    matrix: str
    full_range: bool
    bit_depth: int
    y_offset: float
    c_offset: float
    y_scale: float
    c_scale: float
    r_v: float
    g_u: float
    g_v: float
    b_u: float

    def as_array(self) -> np.ndarray:
        """``[y_offset, c_offset, y_scale, c_scale, r_v, g_u, g_v, b_u]``, float32 kernel args."""
        return np.array([self.y_offset, self.c_offset, self.y_scale, self.c_scale,
                         self.r_v, self.g_u, self.g_v, self.b_u], np.float32)


def yuv_to_rgb_coefficients(matrix: str = "bt601", full_range: bool = False,
                            bit_depth: int = 8) -> YuvToRgb:
    """The conversion for a matrix name (:data:`MATRICES`), range and bit depth (8..16)."""
    if matrix not in MATRICES:
        raise ValueError(f"unknown YUV matrix {matrix!r} (choose from {', '.join(MATRICES)})")
    if not 8 <= bit_depth <= 16:
        raise ValueError(f"unsupported bit depth {bit_depth}")
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    step = 1 << (bit_depth - 8)
    if full_range:
        y_offset, y_scale = 0.0, 255.0 / ((1 << bit_depth) - 1)
        c_scale = y_scale
    else:
        y_offset, y_scale = 16.0 * step, 255.0 / (219 * step)
        c_scale = 255.0 / (224 * step)
    return YuvToRgb(matrix, full_range, bit_depth, _f32(y_offset), _f32(128.0 * step),
                    _f32(y_scale), _f32(c_scale), _f32(2 * (1 - kr)),
                    _f32(2 * kb * (1 - kb) / kg), _f32(2 * kr * (1 - kr) / kg), _f32(2 * (1 - kb)))


def _f32(value: float) -> float:
    """A constant rounded to float32, as the kernel will hold it."""
    return float(np.float32(value))


def chroma_shift(luma: int, chroma: int) -> int:
    """log2 of the subsampling that makes ``chroma`` samples out of ``luma`` (0, 1 or 2)."""
    for shift in (0, 1, 2):
        if -(-luma >> shift) == chroma:
            return shift
    raise ValueError(f"chroma plane of {chroma} samples does not fit {luma} luma samples")


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, conv: YuvToRgb, *,
               rows: Optional[np.ndarray] = None, cols: Optional[np.ndarray] = None) -> np.ndarray:
    """RGB uint8 ``(h, w, 3)`` of planar YUV (chroma possibly subsampled), optionally of the
    pixels at ``rows x cols`` only (same values as converting everything, then taking them)."""
    sy, sx = chroma_shift(y.shape[0], u.shape[0]), chroma_shift(y.shape[1], u.shape[1])
    whole = rows is None and cols is None
    rows = np.arange(y.shape[0]) if rows is None else np.asarray(rows)
    cols = np.arange(y.shape[1]) if cols is None else np.asarray(cols)
    f32 = np.float32
    luma = (y if whole else y[np.ix_(rows, cols)]).astype(f32)
    luma = (luma - f32(conv.y_offset)) * f32(conv.y_scale)
    crows, ccols = np.ix_(rows >> sy, cols >> sx)
    cu = (u[crows, ccols].astype(f32) - f32(conv.c_offset)) * f32(conv.c_scale)
    cv = (v[crows, ccols].astype(f32) - f32(conv.c_offset)) * f32(conv.c_scale)
    out = np.empty(luma.shape + (3,), np.uint8)
    for channel, value in enumerate((luma + f32(conv.r_v) * cv,
                                     luma - f32(conv.g_u) * cu - f32(conv.g_v) * cv,
                                     luma + f32(conv.b_u) * cu)):
        out[..., channel] = np.clip(np.rint(value), 0, 255)
    return out
