"""OpenAI CLIP ViT image tower as COVER's semantic backbone uses it (CLIP-IQA+ with ViT-L/14).

Upstream calls CLIP with ``pos_embedding=False``: the patch tokens get **no** positional
embedding, which is also why a 512 px input works with a tower trained at 224 px. What the
backbone returns is CLIP's image feature ``ln_post(class token) @ proj``, L2-normalised per image
(CLIP's ``forward`` divides by the norm; upstream's CLIPIQA hands that feature to COVER).

Parameter names follow OpenAI's ``visual.*`` keys, so the archive loads by stripping that prefix.
LayerNorm eps 1e-5, QuickGELU MLP, pre-norm residual blocks.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ClipVitConfig

MLP_RATIO = 4
LN_EPS = 1e-5


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU, ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout, batch-first.

    ``head_chunk`` (set only while exporting, see ``graphs.attention_in_head_chunks``) attends
    that many heads at a time: the same arithmetic per head, but a graph whose attention scores
    ``(N, heads, S, S)`` -- 2.15 GB per layer for 20 frames at 512 px, twice (scores, softmax) --
    exist a chunk at a time in runtimes that materialise them (ONNX Runtime's CPU provider).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_chunk: Optional[int] = None
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.head_chunk and self.head_chunk < self.heads:
            x = torch.cat([F.scaled_dot_product_attention(qc, kc, vc) for qc, kc, vc in
                           zip(*(t.split(self.head_chunk, dim=1) for t in (q, k, v)))], dim=1)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, width * MLP_RATIO)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(width * MLP_RATIO, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width)
        self.ln_2 = nn.LayerNorm(width, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*(ResidualAttentionBlock(width, heads) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class ClipVisionTower(nn.Module):
    """``(N, 3, H, W)`` images -> ``(N, output_dim)`` unit-norm CLIP image features."""

    def __init__(self, cfg: ClipVitConfig):
        super().__init__()
        self.cfg = cfg
        scale = cfg.width ** -0.5
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                               bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)
        self.ln_post = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, cfg.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (N, grid * grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1))  # no positional embedding (upstream)
        x = self.transformer(x)
        feat = self.ln_post(x[:, 0]) @ self.proj
        return feat / feat.norm(dim=-1, keepdim=True)
