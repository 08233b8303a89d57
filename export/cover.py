"""The COVER model: three backbones, semantic cross-gating of the other two, three score heads.

Inference-only port of upstream ``cover.models.evaluator.COVER`` (as configured by ``cover.yml``),
with batching. Module paths equal COVER.pth's keys; the CLIP tower sits at ``semantic_backbone``
(OpenAI's ``visual.*`` keys, see :mod:`.weights`).

Data flow for a batch of ``B`` clips (shapes for the official sizes):

* semantic view ``(B, 3, 20, 512, 512)`` -> per-frame unit-norm CLIP features ``(B, 768, 20)``.
  Upstream expands them to ``(B, 768, 20, 7, 7)`` before its head and gates; the expansion is
  implicit here (identical values: every position sees the same vector).
* technical/aesthetic views ``(B, 3, 40, 224, 224)`` -> backbone features ``(B, 768, 20, 7, 7)``;
  a single frame (image, T=1) is duplicated to T=2 first, as upstream does.
* ``smtc_gate_tech`` / ``smtc_gate_aesc`` gate those features with the semantic ones, then each
  branch's :class:`VQAHead` gives a score map ``(B, 1, T', h, w)``.

The semantic score map is spread over the grid of the technical feature map that the configured
technical input produces (``ModelConfig.inputs["technical"]``; 7x7 for the official 224 px view,
which is upstream's hard-coded size). A branch score is the mean of its map and only the mean is
used, so the grid size does not change any score.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import swin3d
from .clip_vit import ClipVisionTower
from .config import ModelConfig
from .convnext3d import ConvNeXt3D
from .swin3d import SwinTransformer3D


#: Dropout of upstream's heads (on their input and hidden layer) and of its cross-gates (after
#: ``out_project_y``). Active only in train mode (``cover-train``); identity in eval mode, so
#: inference and the exported graphs do not see it.
HEAD_DROPOUT = 0.5
GATE_DROPOUT = 0.1


class VQAHead(nn.Module):
    """1x1x1 Conv3d -> GELU (erf) -> 1x1x1 Conv3d to one channel: a score per position."""

    def __init__(self, in_channels: int, hidden_channels: int, dropout: float = HEAD_DROPOUT):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, kernel_size=1)
        self.gelu = nn.GELU()
        self.fc_last = nn.Conv3d(hidden_channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_last(self.dropout(self.gelu(self.fc_hid(self.dropout(x)))))


class CrossGatingBlock(nn.Module):
    """Upstream's cross-gating MLP: ``y' = Conv_1(y)``, ``g = gelu_tanh(in_project_x(Conv_0(x)))``,
    out ``= out_project_y(y' * g) + y'`` (all linear over channels).

    ``x`` is the semantic feature per frame, ``(B, Cx, T)``; upstream feeds it expanded over the
    grid, but the x path is per-position, so it is computed once per frame and broadcast.
    """

    def __init__(self, x_channels: int, y_channels: int, channels: int,
                 dropout: float = GATE_DROPOUT):
        super().__init__()
        self.Conv_0 = nn.Linear(x_channels, channels)
        self.Conv_1 = nn.Linear(y_channels, channels)
        self.in_project_x = nn.Linear(channels, channels)
        self.out_project_y = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: ``(B, Cx, T)``; y: ``(B, Cy, T, h, w)`` -> ``(B, channels, T, h, w)``."""
        if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
            raise ValueError(f"semantic features {tuple(x.shape)} do not match branch features "
                             f"{tuple(y.shape)} in batch size or frame count")
        gate = F.gelu(self.in_project_x(self.Conv_0(x.transpose(1, 2))), approximate="tanh")
        y = self.Conv_1(y.permute(0, 2, 3, 4, 1))
        y = self.dropout(self.out_project_y(y * gate[:, :, None, None, :])) + y
        return y.permute(0, 4, 1, 2, 3)


class COVER(nn.Module):
    """COVER built from a :class:`ModelConfig`; inputs are normalised views ``(B, 3, T, H, W)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        sem, tech, aes = cfg.semantic.out_channels, cfg.technical.out_channels, cfg.aesthetic.out_channels
        self.technical_backbone = SwinTransformer3D(cfg.technical)
        self.aesthetic_backbone = ConvNeXt3D(cfg.aesthetic)
        self.semantic_backbone = ClipVisionTower(cfg.semantic)
        self.technical_head = VQAHead(cfg.gate_channels, cfg.head_hidden)
        self.aesthetic_head = VQAHead(cfg.gate_channels, cfg.head_hidden)
        self.semantic_head = VQAHead(sem, cfg.head_hidden)
        self.smtc_gate_tech = CrossGatingBlock(sem, tech, cfg.gate_channels)
        self.smtc_gate_aesc = CrossGatingBlock(sem, aes, cfg.gate_channels)
        technical_thw = tuple(cfg.inputs["technical"][2:])
        #: (h, w) of the semantic score map: the technical feature grid for the configured input.
        self.semantic_grid: tuple[int, int] = swin3d.output_size(cfg.technical, technical_thw)[1:]

    def semantic_features(self, view: torch.Tensor) -> torch.Tensor:
        """Semantic view ``(B, 3, T, H, W)`` -> unit-norm CLIP features per frame ``(B, C, T)``."""
        b, c, t, h, w = view.shape
        frames = view.transpose(1, 2).reshape(b * t, c, h, w)
        return self.semantic_backbone(frames).view(b, t, -1).transpose(1, 2)

    def technical_features(self, view: torch.Tensor) -> torch.Tensor:
        """Technical (fragment) view -> Swin features ``(B, C, T', h, w)``."""
        return self.technical_backbone(_as_clip(view))

    def aesthetic_features(self, view: torch.Tensor) -> torch.Tensor:
        """Aesthetic (resized) view -> ConvNeXt features ``(B, C, T', h, w)``."""
        return self.aesthetic_backbone(_as_clip(view))

    def semantic_score(self, sem_feats: torch.Tensor) -> torch.Tensor:
        """Semantic features ``(B, C, T)`` -> score map ``(B, 1, T, h, w)``.

        In eval mode the head runs once per frame and the map is broadcast (same values); in
        train mode it runs on every grid position, as upstream, so dropout masks differ per
        position.
        """
        feats = sem_feats[..., None, None]
        if self.training:
            return self.semantic_head(feats.expand(-1, -1, -1, *self.semantic_grid))
        return self.semantic_head(feats).expand(-1, -1, -1, *self.semantic_grid)

    def technical_score(self, feat: torch.Tensor, sem_feats: torch.Tensor) -> torch.Tensor:
        """Technical backbone features gated by the semantic ones -> score map."""
        return self.technical_head(self.smtc_gate_tech(sem_feats, feat))

    def aesthetic_score(self, feat: torch.Tensor, sem_feats: torch.Tensor) -> torch.Tensor:
        """Aesthetic backbone features gated by the semantic ones -> score map."""
        return self.aesthetic_head(self.smtc_gate_aesc(sem_feats, feat))

    def heads(self, sem_feats: torch.Tensor, tech_feat: torch.Tensor,
              aes_feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three score maps from backbone features: everything after the (frozen) backbones,
        i.e. what ``cover-train`` trains on cached features."""
        return {"semantic": self.semantic_score(sem_feats),
                "technical": self.technical_score(tech_feat, sem_feats),
                "aesthetic": self.aesthetic_score(aes_feat, sem_feats)}

    def forward_semantic(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic view -> (score map ``(B, 1, T, h, w)``, unit-norm features ``(B, C, T)``)."""
        feats = self.semantic_features(view)
        return self.semantic_score(feats), feats

    def forward_technical(self, view: torch.Tensor, sem_feats: torch.Tensor) -> torch.Tensor:
        """Technical (fragment) view + semantic features -> score map ``(B, 1, T', h, w)``."""
        return self.technical_score(self.technical_features(view), sem_feats)

    def forward_aesthetic(self, view: torch.Tensor, sem_feats: torch.Tensor) -> torch.Tensor:
        """Aesthetic (resized) view + semantic features -> score map ``(B, 1, T', h, w)``."""
        return self.aesthetic_score(self.aesthetic_features(view), sem_feats)

    def forward(self, semantic: torch.Tensor, technical: torch.Tensor,
                aesthetic: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three score maps, keyed by branch name."""
        sem_map, sem_feats = self.forward_semantic(semantic)
        return {
            "semantic": sem_map,
            "technical": self.forward_technical(technical, sem_feats),
            "aesthetic": self.forward_aesthetic(aesthetic, sem_feats),
        }


def _as_clip(view: torch.Tensor) -> torch.Tensor:
    """Upstream feeds a single frame twice (T=2) to the video backbones."""
    return torch.cat([view, view], dim=2) if view.shape[2] == 1 else view
