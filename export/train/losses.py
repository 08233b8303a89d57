"""Upstream's training losses (``train_one_dataset.py``), on one batch of per-video scores.

Both take predictions and MOS as ``(B, 1)`` or ``(B,)`` tensors and return a scalar:

* :func:`plcc_loss`: both sides standardised (population std, ``+1e-8``); the mean of
  ``MSE(p, y) / 4`` and ``MSE(rho * p, y) / 4`` with ``rho = mean(p * y)``, the batch's Pearson
  correlation. Zero when predictions are an increasing linear map of MOS.
* :func:`rank_loss`: ``relu((p_i - p_j) * sign(y_j - y_i))`` over all ordered pairs (a
  positive term for every pair ranked the wrong way), summed, divided by ``B (B - 1)`` and by
  ``1 + max`` of the terms.
* :func:`cover_loss`: per branch ``plcc_loss + 0.3 * rank_loss`` on the branch's mean score,
  summed over the three branches (upstream's ``need_separate_sup``).

A batch needs at least two videos (``rank_loss`` divides by ``B - 1``); the trainer never forms a
batch of one.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from cover_engine.runtime.constants import BRANCHES, TRAIN_RANK_WEIGHT

__all__ = ["plcc_loss", "rank_loss", "cover_loss"]

_EPS = 1e-8


def _column(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 1)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    std, mean = torch.std_mean(x, unbiased=False)
    return (x - mean) / (std + _EPS)


def plcc_loss(pred: torch.Tensor, mos: torch.Tensor) -> torch.Tensor:
    """``(MSE(p, y) + MSE(rho p, y)) / 8`` on standardised ``p``, ``y`` (see the module doc)."""
    p, y = _standardise(_column(pred)), _standardise(_column(mos).to(pred.dtype))
    rho = torch.mean(p * y)
    return ((F.mse_loss(p, y) / 4 + F.mse_loss(rho * p, y) / 4) / 2).float()


def rank_loss(pred: torch.Tensor, mos: torch.Tensor) -> torch.Tensor:
    """Mean hinge on wrongly ordered pairs, scaled by ``1 / (1 + largest term)``."""
    p, y = _column(pred), _column(mos).to(pred.dtype)
    n = p.shape[0]
    if n < 2:
        raise ValueError("rank_loss needs at least two videos in a batch")
    wrong = F.relu((p - p.t()) * torch.sign(y.t() - y))
    return (wrong.sum() / n / (n - 1) / (1 + wrong.max())).float()


def cover_loss(branch_scores: Mapping[str, torch.Tensor], mos: torch.Tensor,
               rank_weight: float = TRAIN_RANK_WEIGHT) -> torch.Tensor:
    """Sum over the branches of ``plcc_loss + rank_weight * rank_loss`` of each branch's score."""
    return sum(plcc_loss(branch_scores[b], mos) + rank_weight * rank_loss(branch_scores[b], mos)
               for b in BRANCHES)
