"""Learning-rate schedule and weight averaging, as upstream's ``train_one_dataset.py``.

Schedule: ``LambdaLR`` with factor ``i / warmup`` for ``i <= warmup`` and
``0.5 (1 + cos(pi (i - warmup) / total))`` after, where ``i`` counts optimiser steps,
``warmup = int(warmup_epochs * steps_per_epoch)`` and ``total = int(epochs * steps_per_epoch)``.
Two of upstream's quirks are kept because they are its behaviour: the very first step runs at
factor 0 (``LambdaLR`` applies ``lambda(0)`` before any step), and the cosine runs over
``total`` rather than ``total - warmup`` steps, so it ends above 0.

EMA: after every step each trained parameter's average moves ``1 - decay`` of the way to it
(upstream updates ``named_parameters``; frozen ones never change, so averaging only the trained
ones is the same and costs no copy of the backbones).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from cover_engine.runtime.constants import TRAIN_EMA_DECAY

__all__ = ["lr_factor", "make_scheduler", "Ema"]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if step <= warmup:
        return step / warmup if warmup > 0 else 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total, 1)))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup: int,
                   total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Upstream's warm-up + cosine ``LambdaLR``; call ``step()`` after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, warmup, total))


class Ema:
    """Exponential moving average of a model's trainable parameters."""

    def __init__(self, model: nn.Module, decay: float = TRAIN_EMA_DECAY):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()
                       if p.requires_grad}

    def track(self, model: nn.Module) -> None:
        """Start averaging parameters that became trainable (unfrozen backbones) from their
        current values, which are what upstream's full-model average holds for them then."""
        for n, p in model.named_parameters():
            if p.requires_grad and n not in self.shadow:
                self.shadow[n] = p.detach().clone()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model with the averaged weights swapped in (restored on exit)."""
        with swapped(model, self.shadow):
            yield model


@contextlib.contextmanager
def swapped(model: nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Temporarily copy ``tensors`` (by parameter name) into ``model``."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in tensors}
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
