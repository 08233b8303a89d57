"""Video Swin-T with FAST-VQA's fragment position bias (upstream ``SwinTransformer3D``, "GRPB").

The technical branch of COVER. Behaviour reproduced from upstream, quirks included:

* Windows are clipped to the feature size (``get_window_size``): a dimension no larger than the
  window uses the whole dimension and is not shifted. Features are zero-padded (after ``norm1``)
  to a multiple of the window; padded tokens take part in attention, as upstream.
* The relative position index of a clipped window is the top-left ``N x N`` block of the full
  window's index (upstream slices ``relative_position_index[:N, :N]``). This is the true index
  when only time is clipped (time is the outermost axis) and a different one when height or width
  is clipped; both are reproduced as upstream computes them.
* Fragment position bias ("GRPB"): every window is split into a ``Wh x Ww`` grid of fragments
  (nearest-neighbour mapping of the padded feature grid onto the fragment grid, shifted with the
  window). For a pair of tokens, ``gate = |dh| + |dw|`` counts fragment steps between them and the
  bias is ``rel_bias * gate + frag_bias * (1 - gate)``. ``gate`` is not clamped to 1 upstream: two
  tokens diagonally across a fragment corner get ``2 * rel_bias - frag_bias``. Stages without a
  fragment table use the plain relative bias.
* The shifted-window mask uses -100 (not -inf) between tokens from different regions.

Geometry (windows, fragments, shift regions) is computed by pure functions of the feature size, so
an exported graph carries only small per-window tables, not ``(nW, N, N)`` constants.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import ceil, prod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import SwinConfig

Size3 = tuple[int, int, int]

#: Swin's MLP expansion and LayerNorm epsilon (torch's default), fixed by the architecture.
MLP_RATIO = 4
LN_EPS = 1e-5
#: Additive attention mask between tokens of different shift regions (upstream uses -100).
SHIFT_MASK_VALUE = -100.0


# ----------------------------------------------------------------------------- geometry (pure)

@dataclass(frozen=True)
class WindowLayout:
    """Window partition of one feature map: clipped window and shift, and the padded size."""

    window: Size3
    shift: Size3
    padded: Size3

    @property
    def tokens(self) -> int:
        return prod(self.window)

    @property
    def num_windows(self) -> int:
        return prod(p // w for p, w in zip(self.padded, self.window))

    @property
    def shifted(self) -> bool:
        return any(s > 0 for s in self.shift)


def window_layout(size: Size3, window: Size3, shift: Size3) -> WindowLayout:
    """Upstream ``get_window_size`` plus padding: a dimension ``<=`` the window uses its full
    extent and no shift; the map is padded at the end up to a multiple of the window."""
    win = tuple(s if s <= w else w for s, w in zip(size, window))
    sft = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    padded = tuple(ceil(s / w) * w for s, w in zip(size, win))
    return WindowLayout(win, sft, padded)


def relative_position_index(window: Size3) -> np.ndarray:
    """``(N, N)`` index into the ``(2Wd-1)(2Wh-1)(2Ww-1)`` bias table for tokens of one window."""
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :] + np.array(window)[:, None, None] - 1
    strides = ((2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1)
    return np.tensordot(np.array(strides), rel, axes=1).astype(np.int64)


def nearest_source_index(out_size: int, in_size: int) -> np.ndarray:
    """Source index of each output element of torch's ``interpolate(mode="nearest")``.

    Torch computes ``floor(i * (in / out))`` in float32 (identity and ``i >> 1`` short cuts give the
    same values), clamped to ``in - 1``.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def _partition(grid: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """``(Dp, Hp, Wp, ...)`` -> ``(num_windows, N, ...)`` in upstream's window order."""
    (dp, hp, wp), (wd, wh, ww) = layout.padded, layout.window
    rest = grid.shape[3:]
    g = grid.reshape(dp // wd, wd, hp // wh, wh, wp // ww, ww, *rest)
    g = g.transpose(0, 2, 4, 1, 3, 5, *range(6, 6 + len(rest)))
    return g.reshape(layout.num_windows, layout.tokens, *rest)


def _rolled_grid(layout: WindowLayout, per_dim: list[np.ndarray]) -> np.ndarray:
    """Broadcast per-dimension labels to the padded grid, cyclically shifted like the features."""
    d, h, w = (np.roll(v, -s) for v, s in zip(per_dim, layout.shift))
    return np.stack(np.broadcast_arrays(d[:, None, None], h[None, :, None], w[None, None, :]), -1)


@lru_cache(maxsize=None)
def fragment_coords(layout: WindowLayout) -> np.ndarray:
    """``(num_windows, N, 2)`` fragment (row, column) of every token, for the fragment gate.

    Upstream maps a ``1 x Wh x Ww`` fragment grid onto the padded map by nearest interpolation, so
    the temporal fragment coordinate is always 0 and is left out here.
    """
    dp, hp, wp = layout.padded
    _, fh, fw = layout.window
    per_dim = [np.zeros(dp, np.int64), nearest_source_index(hp, fh), nearest_source_index(wp, fw)]
    coords = _partition(_rolled_grid(layout, per_dim)[..., 1:], layout)
    coords.setflags(write=False)
    return coords


def _shift_regions(padded: int, window: int, shift: int) -> np.ndarray:
    """Region of each position along one axis after the cyclic shift (upstream ``compute_mask``).

    With no shift the whole axis is one region (upstream's last slice overwrites the others).
    """
    if shift == 0:
        return np.zeros(padded, np.int64)
    pos = np.arange(padded)
    return (pos >= padded - window).astype(np.int64) + (pos >= padded - shift)


@lru_cache(maxsize=None)
def shift_region_labels(layout: WindowLayout) -> np.ndarray:
    """``(num_windows, N)`` region label of every token; attention across labels is masked."""
    regions = [_shift_regions(p, w, s) for p, w, s in zip(layout.padded, layout.window, layout.shift)]
    d, h, w = regions
    labels = (d[:, None, None] * 9 + h[None, :, None] * 3 + w[None, None, :])[..., None]
    labels = _partition(labels, layout)[..., 0]
    labels.setflags(write=False)
    return labels


def output_size(cfg: SwinConfig, input_size: Size3) -> Size3:
    """Feature-map ``(T, H, W)`` of the backbone for a ``(T, H, W)`` input (pad to the patch,
    then each patch merging halves H and W, rounding up)."""
    t, h, w = (ceil(s / p) for s, p in zip(input_size, cfg.patch_size))
    for _ in range(len(cfg.depths) - 1):
        h, w = ceil(h / 2), ceil(w / 2)
    return t, h, w


# ----------------------------------------------------------------------------- modules


def _exporting() -> bool:
    """True while torch.onnx / torch.export / TorchScript trace the model."""
    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(torch.onnx.is_in_onnx_export() or is_exporting() or torch.jit.is_tracing())


def fused_attention() -> bool:
    """Whether window attention runs through ``F.scaled_dot_product_attention``: in eager runs
    and under ``torch.compile``, where it selects the flash / memory-efficient kernels on a GPU
    (and a fused kernel on a CPU, within 1e-6 of the explicit form); not while exporting, so the
    ONNX graphs keep the explicit MatMul / Add / Softmax that TensorRT's parser was verified on.
    """
    return not _exporting()

class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside windows, with relative and fragment position biases."""

    def __init__(self, dim: int, window_size: Size3, num_heads: int, frag_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = tuple(window_size)  # the weight loader rebuilds the index from it
        self.scale = (dim // num_heads) ** -0.5
        table_len = prod(2 * w - 1 for w in window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_len, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        if frag_bias:
            self.fragment_position_bias_table = nn.Parameter(torch.zeros(table_len, num_heads))
        else:
            self.fragment_position_bias_table = None
        self.register_buffer("relative_position_index",
                             torch.tensor(relative_position_index(window_size)))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, n: int, frag_gate: torch.Tensor | None) -> torch.Tensor:
        """``(nH, N, N)``, or ``(nW, nH, N, N)`` with the fragment gate ``(nW, N, N)``."""
        index = self.relative_position_index[:n, :n].reshape(-1)
        rel = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        if self.fragment_position_bias_table is None:
            return rel
        frag = self.fragment_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        gate = frag_gate.unsqueeze(1)
        return rel.unsqueeze(0) * gate + frag * (1 - gate)

    def forward(self, x: torch.Tensor, frag_gate: torch.Tensor | None,
                shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: ``(B * nW, N, C)``; frag_gate, shift_mask: ``(nW, N, N)`` or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # Upstream adds the bias, then the mask; adding them together first changes only
        # entries offset by -100, whose softmax weight is ~1e-44 either way.
        bias = self.position_bias(n, frag_gate)
        if shift_mask is not None:
            bias = bias + shift_mask.unsqueeze(1)
        if fused_attention():
            x = self._fused(q, k, v, bias)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias.dim() == 4:  # per-window bias: (nW, nH, N, N)
                nw = bias.shape[0]
                attn = (attn.view(bw // nw, nw, self.num_heads, n, n) + bias).view(
                    bw, self.num_heads, n, n)
            else:
                attn = attn + bias
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(bw, n, c))

    def _fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor) -> torch.Tensor:
        """The same attention through ``scaled_dot_product_attention`` (flash / memory-efficient
        kernels take an additive mask). A per-window bias ``(nW, nH, N, N)`` is laid out as
        ``nW * nH`` heads of ``B`` items, so the mask broadcasts over the batch uncopied."""
        bw, heads, n, d = q.shape
        bias = bias.to(q.dtype)
        if bias.dim() == 3:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        nw = bias.shape[0]
        fold = lambda t: t.reshape(bw // nw, nw * heads, n, d)  # noqa: E731
        out = F.scaled_dot_product_attention(fold(q), fold(k), fold(v),
                                             attn_mask=bias.reshape(1, nw * heads, n, n),
                                             scale=self.scale)
        return out.view(bw, heads, n, d)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock3D(nn.Module):
    """Pre-norm (shifted-)window attention block, channels-last ``(B, D, H, W, C)``."""

    def __init__(self, dim: int, num_heads: int, window_size: Size3, frag_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = WindowAttention3D(dim, window_size, num_heads, frag_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor, layout: WindowLayout, frag_gate: torch.Tensor | None,
                shift_mask: torch.Tensor | None) -> torch.Tensor:
        b, d, h, w, c = x.shape
        (dp, hp, wp), (wd, wh, ww), shift = layout.padded, layout.window, layout.shift
        y = F.pad(self.norm1(x), (0, 0, 0, wp - w, 0, hp - h, 0, dp - d))
        if layout.shifted:
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        # window partition -> attention -> window merge
        y = y.view(b, dp // wd, wd, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        y = self.attn(y.reshape(-1, layout.tokens, c), frag_gate, shift_mask)
        y = y.view(b, dp // wd, hp // wh, wp // ww, wd, wh, ww, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        y = y.reshape(b, dp, hp, wp, c)
        if layout.shifted:
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        x = x + y[:, :d, :h, :w]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 spatial merge: pad odd H/W, concatenate the four phases, LayerNorm, linear to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                       x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks alternating plain and shifted windows, then an optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Size3, frag_bias: bool,
                 downsample: bool):
        super().__init__()
        self.window_size = window_size
        self.shift_size = tuple(w // 2 for w in window_size)
        self.frag_bias = frag_bias
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, window_size, frag_bias) for _ in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plans = self._plans(tuple(x.shape[1:4]), x)
        for i, blk in enumerate(self.blocks):
            x = blk(x, *plans[i % 2])
        return x if self.downsample is None else self.downsample(x)

    def _plans(self, size: Size3, like: torch.Tensor) -> list:
        """Window layout, fragment gate and shift mask of the plain and the shifted blocks.

        The tables come from numpy; copying them to the GPU on every call would stop the host
        until the device caught up (a pageable host-to-device copy), which also rules out CUDA
        graph capture. So eager runs keep them per (size, device, dtype); an export traces them
        as constants of the graph, as before.
        """
        key = (size, like.device, like.dtype)
        cached = self.__dict__.get("_plan_cache")
        if cached is not None and key in cached and not _exporting():
            return cached[key]
        plans = []  # even blocks use plain windows, odd blocks shifted ones
        for shift in ((0, 0, 0), self.shift_size)[:len(self.blocks)]:
            layout = window_layout(size, self.window_size, shift)
            plans.append((layout, self._frag_gate(layout, like), self._shift_mask(layout, like)))
        if not _exporting():
            self.__dict__.setdefault("_plan_cache", {})[key] = plans
        return plans

    def _frag_gate(self, layout: WindowLayout, like: torch.Tensor) -> torch.Tensor | None:
        """``(nW, N, N)`` number of fragment steps between two tokens of a window."""
        if not self.frag_bias:
            return None
        c = torch.from_numpy(fragment_coords(layout).astype(np.float32)).to(like.device)
        return (c.unsqueeze(1) - c.unsqueeze(2)).abs().sum(-1).to(like.dtype)

    @staticmethod
    def _shift_mask(layout: WindowLayout, like: torch.Tensor) -> torch.Tensor | None:
        """``(nW, N, N)``: 0 within a shift region, -100 across regions; None when not shifted."""
        if not layout.shifted:
            return None
        lab = torch.from_numpy(shift_region_labels(layout).copy()).to(like.device)
        differ = lab.unsqueeze(1) != lab.unsqueeze(2)
        return differ.to(like.dtype) * SHIFT_MASK_VALUE


class PatchEmbed3D(nn.Module):
    """Pad to a multiple of the patch, strided Conv3d, LayerNorm; returns channels-last."""

    def __init__(self, patch_size: Size3, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [(-s) % p for s, p in zip(x.shape[2:], self.patch_size)]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class SwinTransformer3D(nn.Module):
    """``(B, 3, T, H, W)`` -> final-norm features ``(B, C, T', H', W')`` of the last stage."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.cfg = cfg
        n = len(cfg.depths)
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(cfg.stage_dim(i), cfg.depths[i], cfg.num_heads[i], cfg.window_size,
                      cfg.frag_biases[i], downsample=i < n - 1)
            for i in range(n))
        self.norm = nn.LayerNorm(cfg.out_channels, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x).permute(0, 4, 1, 2, 3)
