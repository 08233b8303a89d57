"""ConvNeXt inflated to 3D (upstream ``ConvNeXt3D`` / ``convnext_3d_tiny``): the aesthetic branch.

Upstream details kept: the stem is a (2, 4, 4)/(2, 4, 4) Conv3d followed by a channels-first
LayerNorm; each later downsample is a channels-first LayerNorm then a (1, 2, 2)/(1, 2, 2) Conv3d
(time is only reduced by the stem). Block ``j`` of every stage has a depthwise kernel
``(k, 7, 7)`` with ``k = inflate_strategy[j % len]`` (so "131" gives 1, 3, 1, 1, 3, 1, ...).
All LayerNorms use eps 1e-6, GELU is the exact (erf) one, and each block scales its residual by a
learned per-channel ``gamma``. The output is the last stage's features after the final LayerNorm.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ConvNeXtConfig

#: Fixed by the architecture (upstream ConvNeXt3D), not by the model size.
STEM_KERNEL = (2, 4, 4)
DOWNSAMPLE_KERNEL = (1, 2, 2)
SPATIAL_KERNEL = 7
MLP_RATIO = 4
LN_EPS = 1e-6
LAYER_SCALE_INIT = 1e-6


class LayerNormChannelsFirst(nn.Module):
    """LayerNorm over dim 1 of ``(B, C, T, H, W)``, written out as upstream computes it
    (mean, biased variance, divide by ``sqrt(var + eps)``)."""

    def __init__(self, dim: int, eps: float = LN_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class Block3D(nn.Module):
    """Depthwise ``(k, 7, 7)`` conv -> LayerNorm -> MLP (4x, GELU) -> ``gamma`` -> residual."""

    def __init__(self, dim: int, temporal_kernel: int):
        super().__init__()
        kernel = (temporal_kernel, SPATIAL_KERNEL, SPATIAL_KERNEL)
        self.dwconv = nn.Conv3d(dim, dim, kernel_size=kernel, padding=tuple(k // 2 for k in kernel),
                                groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, MLP_RATIO * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(MLP_RATIO * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 4, 1, 2, 3)


class ConvNeXt3D(nn.Module):
    """``(B, 3, T, H, W)`` -> final-norm features ``(B, C, T', H', W')`` of the last stage."""

    def __init__(self, cfg: ConvNeXtConfig):
        super().__init__()
        self.cfg = cfg
        dims, strategy = cfg.dims, cfg.inflate_strategy
        stem = nn.Sequential(nn.Conv3d(3, dims[0], kernel_size=STEM_KERNEL, stride=STEM_KERNEL),
                             LayerNormChannelsFirst(dims[0]))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(
                LayerNormChannelsFirst(dims[i]),
                nn.Conv3d(dims[i], dims[i + 1], kernel_size=DOWNSAMPLE_KERNEL, stride=DOWNSAMPLE_KERNEL)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block3D(dim, int(strategy[j % len(strategy)])) for j in range(depth)))
            for dim, depth in zip(dims, cfg.depths))
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


def output_size(cfg: ConvNeXtConfig, input_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """Feature-map ``(T, H, W)`` for a ``(T, H, W)`` input (unpadded strided convolutions)."""
    size = tuple(s // k for s, k in zip(input_size, STEM_KERNEL))
    for _ in range(len(cfg.dims) - 1):
        size = tuple(s // k for s, k in zip(size, DOWNSAMPLE_KERNEL))
    return size
