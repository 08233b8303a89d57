"""YUV -> RGB conversion maths, shared by the numpy path and the CUDA NV12/P016 kernel.

Two conversions (``--colour``): **decord** (the default, :class:`SwsConversion`) returns what
upstream's decoder returns, bit for bit; **exact** (:class:`YuvToRgb`) is the matrix in float32.

Exact
-----
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

Decord
------
Upstream decoded with decord, whose filter graph ``scale=W:H`` + ``rgb24`` sink runs FFmpeg
4.1's swscale with the scale filter's defaults (bilinear, matrix from the frame's colorspace --
the same mapping as :func:`matrix_for` -- range from the frame, RGB full range). Which swscale
code runs depends on the frame (measured against decord, see docs/colour.md):

* ``mmx`` -- 8-bit 4:2:0/4:2:2 with an even height: the unscaled converter, whose x86 version
  (every x86-64 CPU takes it) works in 16-bit fixed point: ``Y' = 8Y - yoff``, ``U' = 8U -
  1024``, ``V' = 8V - 1024``; ``y = (Y' cy) >> 16``; ``R = y + (V' vr >> 16)``, ``G = y + (U' ug
  >> 16) + (V' vg >> 16)``, ``B = y + (U' ub >> 16)``, clamped to 0..255 (``>>`` floors).
  Chroma is the nearest sample ``(r >> sy, c >> 1)``.
* ``table`` -- everything else with a subsampled chroma width and an even frame width (odd
  heights, more than 8 bits): the generic scaler. Samples become 15-bit (``x << (15 - bits)``);
  chroma rows are interpolated by the bilinear vertical filter of FFmpeg's ``initFilter``, of
  which the packed-RGB output keeps only this much: the first tap's row when the second weight
  is below one half, else the two rows averaged (rounding up). 8-bit values then index the
  lookup tables of ``ff_yuv2rgb_c_init_tables``, written here as the arithmetic they tabulate.
* ``full`` -- odd frame widths and unsubsampled chroma (4:4:4): swscale forces full-resolution
  chroma, interpolates chroma columns with the same bilinear filter (14-bit taps, 15-bit
  results) and computes RGB in 32-bit integers (``yuv2rgb_write_full``), including its
  wrap-around for very bright saturated limited-range pixels, which then come out as 0.

Per frame size the chroma taps are two small tables (:class:`SwsConversion` ``rows`` and
``cols``); the numpy path, the kernels' emulation and the CUDA kernel all read them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

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


# ----------------------------------------------------------------------------- decord (swscale)

#: swscale's ``[crv, cbu, cgu, cgv]`` (16.16 fixed point) per matrix, as FFmpeg 4.1 has them
#: (read from the library decord bundles with ``sws_getCoefficients``).
SWS_COEFFICIENTS: dict[str, tuple[int, int, int, int]] = {
    "bt709": (117489, 138438, 13975, 34925),
    "bt601": (104597, 132201, 25675, 53279),
    "fcc": (104448, 132798, 24759, 53109),
    "smpte240m": (117579, 136230, 16907, 35559),
    "bt2020": (110013, 140363, 12277, 42626),
}
#: Integer constants of :class:`SwsConversion`, in the order of ``ints`` (kernel argument order).
SWS_CONSTANTS: tuple[str, ...] = (
    "mmx_cy", "mmx_yoff", "mmx_vr", "mmx_ub", "mmx_ug", "mmx_vg",
    "tab_cy", "tab_base", "tab_k", "tab_crv", "tab_cbu", "tab_cgu", "tab_cgv",
    "full_cy", "full_yoff", "full_v2r", "full_v2g", "full_u2g", "full_u2b")
SWS_PATHS: tuple[str, ...] = ("mmx", "table", "full")
_UNIT = 1 << 16


def _cdiv(a: int, b: int) -> int:
    """C integer division (rounds toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _round16(value: int) -> int:
    """swscale's ``roundToInt16``: ``value / 2**16`` rounded half up, saturated to int16."""
    return max(-0x8000, min(0x7FFF, (value + 0x8000) >> 16))


@lru_cache(maxsize=None)
def sws_constants(matrix: str, full_range: bool) -> dict[str, int]:
    """The integer constants swscale derives for one matrix and input range (brightness 0,
    contrast and saturation 1), for its three code paths (see the module notes)."""
    if matrix not in SWS_COEFFICIENTS:
        raise ValueError(f"unknown YUV matrix {matrix!r} (choose from {', '.join(MATRICES)})")
    crv, cbu, cgu, cgv = SWS_COEFFICIENTS[matrix]
    cgu, cgv = -cgu, -cgv
    if full_range:
        cy, oy = _UNIT, 0
        crv, cbu, cgu, cgv = (_cdiv(x * 224, 255) for x in (crv, cbu, cgu, cgv))
    else:
        cy, oy = _cdiv(_UNIT * 255, 219), 16 << 16
    fixed = {name: _round16(value << 13) for name, value in
             (("cy", cy), ("vr", crv), ("ub", cbu), ("ug", cgu), ("vg", cgv))}
    per_cy = {name: _cdiv((value << 16) + 0x8000, cy) for name, value in
              (("crv", crv), ("cbu", cbu), ("cgu", cgu), ("cgv", cgv))}
    return {
        "mmx_cy": fixed["cy"], "mmx_yoff": _round16(oy << 3), "mmx_vr": fixed["vr"],
        "mmx_ub": fixed["ub"], "mmx_ug": fixed["ug"], "mmx_vg": fixed["vg"],
        "tab_cy": cy, "tab_base": -(384 << 16) - oy + 0x8000, "tab_k": 384 if full_range else 326,
        "tab_crv": per_cy["crv"], "tab_cbu": per_cy["cbu"], "tab_cgu": per_cy["cgu"],
        "tab_cgv": per_cy["cgv"],
        "full_cy": fixed["cy"], "full_yoff": _round16(oy << 9), "full_v2r": fixed["vr"],
        "full_v2g": fixed["vg"], "full_u2g": fixed["ug"], "full_u2b": fixed["ub"],
    }


def bilinear_taps(src: int, dst: int, one: int) -> tuple[list[int], list[list[int]]]:
    """FFmpeg 4.1 ``initFilter`` for ``SWS_BILINEAR`` with both sides sited at the sample centre
    (how swscale places 4:2:0 chroma, and RGB): per output sample the first source index and the
    integer weights (summing to ``one``), near-zero taps trimmed and borders folded in as
    swscale does. Only same-size and upscaling (``dst >= src``) occur here."""
    if dst < src:
        raise ValueError("swscale chroma filters here only upscale")
    inc = ((src << 16) + (dst >> 1)) // dst
    if abs(inc - _UNIT) < 10:  # unscaled
        return list(range(dst)), [[one] for _ in range(dst)]
    fone = 1 << 54  # upscaling: 1 << (54 - log2(src // dst)) with src // dst == 0
    size = max(min(3, src - 2), 1)  # 1 + the bilinear size factor 2, at most src - 2
    pos, taps = [], []
    centre = ((128 * inc) >> 7) - ((128 * _UNIT) >> 7)  # output position in 1/2**17 of input
    for _ in range(dst):
        first = _cdiv(centre - (size - 2) * _UNIT, 1 << 17)
        row = []
        for j in range(size):
            distance = abs((first + j) * (1 << 17) - centre) << 13
            row.append(max((1 << 30) - distance, 0) * (fone >> 30))
        pos.append(first)
        taps.append(row)
        centre += 2 * inc
    # trim near-zero taps: from the left (moving the start), and count them on the right
    cutoff = 0.002 * fone
    kept = 0
    for i in range(dst - 1, -1, -1):
        row, acc = taps[i], 0
        for _ in range(size):
            acc += abs(row[0])
            if acc > cutoff or (i < dst - 1 and pos[i] >= pos[i + 1]):
                break
            row[:] = row[1:] + [0]
            pos[i] += 1
        acc, width = 0, size
        for j in range(size - 1, 0, -1):
            acc += abs(row[j])
            if acc > cutoff:
                break
            width -= 1
        kept = max(kept, width)
    taps = [row[:kept] for row in taps]
    for i, row in enumerate(taps):  # fold taps outside the source into the border ones
        if pos[i] < 0:
            for j in range(1, kept):
                edge = max(j + pos[i], 0)
                row[edge] += row[j]
                row[j] = 0
            pos[i] = 0
        if pos[i] + kept > src:
            shift = pos[i] + min(kept - src, 0)
            spill = 0
            for j in range(kept - 1, -1, -1):
                if pos[i] + j >= src:
                    spill += row[j]
                    row[j] = 0
            row[:] = [0 if j < shift else row[j - shift] for j in range(kept)]
            pos[i] -= shift
            row[src - 1 - pos[i]] += spill
    out = []
    for row in taps:  # normalise to `one`, carrying the rounding error along the row
        total = max((sum(row) + one // 2) // one, 1)
        error, ints = 0, []
        for value in row:
            value += error
            q = _cdiv(value + (total >> 1) if value >= 0 else value - (total >> 1), total)
            ints.append(q)
            error = value - q * total
        out.append(ints)
    return pos, out


@dataclass(frozen=True)
class SwsConversion:
    """decord's YUV -> RGB for frames of one size, subsampling, bit depth, matrix and range.

    ``rows`` (int32 ``(H,)``): for output row ``r`` the chroma row ``rows[r] >> 1`` and, in bit 0,
    whether the next chroma row is averaged in. ``cols`` (int32 ``(W, 3)``): for output column
    ``c`` the first chroma column and its two 14-bit weights (15-bit chroma intermediates;
    ``mmx`` ignores the weights). ``ints``: :data:`SWS_CONSTANTS` as int32 (kernel arguments).
    """

    matrix: str
    full_range: bool
    bit_depth: int
    path: str
    height: int
    width: int
    rows: np.ndarray
    cols: np.ndarray
    ints: np.ndarray

    @property
    def constants(self) -> dict[str, int]:
        return dict(zip(SWS_CONSTANTS, (int(v) for v in self.ints)))

    @property
    def path_id(self) -> int:
        """Index of :attr:`path` in :data:`SWS_PATHS` (the kernels' switch)."""
        return SWS_PATHS.index(self.path)


def sws_path(bit_depth: int, height: int, width: int, sx: int, sy: int) -> str:
    """Which swscale code converts such frames to rgb24 at the same size (module notes)."""
    if bit_depth == 8 and sx == 1 and sy <= 1 and height % 2 == 0:
        return "mmx"
    if width % 2 == 1 or sx == 0:
        return "full"
    return "table"


@lru_cache(maxsize=64)
def sws_conversion(matrix: str = "bt601", full_range: bool = False, bit_depth: int = 8,
                   height: int = 2, width: int = 2, sx: int = 1, sy: int = 1) -> SwsConversion:
    """decord's conversion for ``height x width`` frames whose chroma is subsampled by
    ``2**sy x 2**sx`` (4:2:0: 1, 1), ``bit_depth`` 8..16."""
    if not 8 <= bit_depth <= 16:
        raise ValueError(f"unsupported bit depth {bit_depth}")
    if height < 1 or width < 1:
        raise ValueError(f"bad frame size {width}x{height}")
    ints = np.array([sws_constants(matrix, full_range)[k] for k in SWS_CONSTANTS], np.int32)
    path = sws_path(bit_depth, height, width, sx, sy)
    ch, cw = -(-height >> sy), -(-width >> sx)
    if path == "mmx":
        rows = (np.arange(height, dtype=np.int32) >> sy) << 1
        cols = np.zeros((width, 3), np.int32)
        cols[:, 0] = np.arange(width) >> 1
        return SwsConversion(matrix, full_range, bit_depth, path, height, width, rows, cols, ints)
    start, weights = bilinear_taps(ch, height, 1 << 12)
    rows = np.empty(height, np.int32)
    for r, (p, w) in enumerate(zip(start, weights)):
        if len(w) > 2 or (len(w) == 2 and (w[0] + w[1] != 4096 or not 0 <= w[1] <= 4096)):
            raise ValueError(f"{width}x{height}: swscale would filter chroma rows generally")
        rows[r] = (p << 1) | int(len(w) == 2 and w[1] >= 2048)
    out_w = width if path == "full" else -(-width >> 1)
    start, weights = bilinear_taps(cw, out_w, 1 << 14)
    if max(len(w) for w in weights) > 2:
        raise ValueError(f"{width}x{height}: more than two chroma taps per column")
    taps = np.array([[p, w[0], w[1] if len(w) > 1 else 0] for p, w in zip(start, weights)],
                    np.int32)
    cols = taps if path == "full" else taps[np.arange(width) >> 1]
    return SwsConversion(matrix, full_range, bit_depth, path, height, width, rows, cols, ints)


def sws_levels(conv: SwsConversion, luma: np.ndarray, chroma: Callable, rows: np.ndarray,
               cols: np.ndarray) -> np.ndarray:
    """RGB levels (int64, ``luma.shape + (3,)``) of the pixels at ``rows x cols`` (broadcast,
    same shape as ``luma``, the pixels' Y code values). ``chroma(k, r, c)`` gives chroma plane
    ``k`` (0: U, 1: V) code values at index arrays ``r, c``. One formula for the numpy path and
    the kernels' emulation; ``views.cu`` is its CUDA transcription."""
    k = conv.constants
    bits = conv.bit_depth
    Y = luma.astype(np.int64)
    rt = conv.rows[rows].astype(np.int64)
    crow, avg = rt >> 1, (rt & 1).astype(bool)
    ct = conv.cols[cols].astype(np.int64)
    c0, w0, w1 = ct[..., 0], ct[..., 1], ct[..., 2]
    if conv.path == "mmx":
        y = ((Y << 3) - k["mmx_yoff"]) * k["mmx_cy"] >> 16
        U = (chroma(0, crow, c0).astype(np.int64) << 3) - 1024
        V = (chroma(1, crow, c0).astype(np.int64) << 3) - 1024
        rgb = (y + (V * k["mmx_vr"] >> 16), y + (U * k["mmx_ug"] >> 16) + (V * k["mmx_vg"] >> 16),
               y + (U * k["mmx_ub"] >> 16))
        return np.clip(np.stack(rgb, axis=-1), 0, 255)

    def c15(plane: int, r: np.ndarray) -> np.ndarray:
        """15-bit horizontally filtered chroma of row(s) ``r`` (hScale: ``>> (bits - 1)``)."""
        a = chroma(plane, r, c0).astype(np.int64) * w0
        b = np.where(w1 != 0, chroma(plane, r, np.where(w1 != 0, c0 + 1, c0)).astype(np.int64),
                     0) * w1
        return np.minimum((a + b) >> (bits - 1), (1 << 15) - 1)

    nxt = np.where(avg, crow + 1, crow)
    U0, V0, U1, V1 = c15(0, crow), c15(1, crow), c15(0, nxt), c15(1, nxt)
    Y15 = (Y << 14) >> (bits - 1)
    if conv.path == "table":
        y8 = (Y15 + 64) >> 7
        U = np.clip(np.where(avg, (U0 + U1 + 128) >> 8, (U0 + 64) >> 7), 0, 255)
        V = np.clip(np.where(avg, (V0 + V1 + 128) >> 8, (V0 + 64) >> 7), 0, 255)

        def offset(value, coeff):
            return (value * coeff >> 16) - (coeff >> 9)

        base = y8 + k["tab_k"]
        rgb = (base + offset(V, k["tab_crv"]),
               base + offset(U, k["tab_cgu"]) + offset(V, k["tab_cgv"]),
               base + offset(U, k["tab_cbu"]))
        return np.stack([np.clip((i * k["tab_cy"] + k["tab_base"]) >> 16, 0, 255) for i in rgb],
                        axis=-1)
    U = np.where(avg, (U0 + U1 - (128 << 8)) * 2, (U0 - (128 << 7)) * 4)
    V = np.where(avg, (V0 + V1 - (128 << 8)) * 2, (V0 - (128 << 7)) * 4)
    y = (Y15 * 4 - k["full_yoff"]) * k["full_cy"] + (1 << 21)
    rgb = np.stack((y + V * k["full_v2r"], y + V * k["full_v2g"] + U * k["full_u2g"],
                    y + U * k["full_u2b"]), axis=-1)
    rgb = ((rgb + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # int32 arithmetic, as swscale's
    return np.clip(rgb, 0, (1 << 30) - 1) >> 22


def sws_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, conv: SwsConversion, *,
            rows: Optional[np.ndarray] = None, cols: Optional[np.ndarray] = None) -> np.ndarray:
    """decord's RGB uint8 ``(h, w, 3)`` of planar YUV, optionally of the pixels at
    ``rows x cols`` only (same values as converting everything, then taking them)."""
    if y.shape != (conv.height, conv.width):
        raise ValueError(f"conversion made for {conv.width}x{conv.height}, frame is "
                         f"{y.shape[1]}x{y.shape[0]}")
    rows = np.arange(y.shape[0]) if rows is None else np.asarray(rows)
    cols = np.arange(y.shape[1]) if cols is None else np.asarray(cols)
    r, c = np.ix_(rows, cols)
    planes = (u, v)
    levels = sws_levels(conv, y[r, c], lambda k, rr, cc: planes[k][rr, cc], r, c)
    return levels.astype(np.uint8)


def frame_conversion(colour: str, matrix: str, full_range: bool, bit_depth: int, height: int,
                     width: int, sx: int, sy: int):
    """The conversion ``colour`` (:data:`~.constants.COLOUR_MODES`) uses for such frames."""
    if colour == "exact":
        return yuv_to_rgb_coefficients(matrix, full_range, bit_depth)
    if colour == "decord":
        return sws_conversion(matrix, full_range, bit_depth, height, width, sx, sy)
    raise ValueError(f"unknown colour conversion {colour!r} (choose decord or exact)")


def convert(y: np.ndarray, u: np.ndarray, v: np.ndarray, conv, *,
            rows: Optional[np.ndarray] = None, cols: Optional[np.ndarray] = None) -> np.ndarray:
    """RGB uint8 of planar YUV with either kind of conversion (see :func:`frame_conversion`)."""
    if isinstance(conv, SwsConversion):
        return sws_rgb(y, u, v, conv, rows=rows, cols=cols)
    return yuv_to_rgb(y, u, v, conv, rows=rows, cols=cols)
