"""Training the gates and heads of COVER on cached backbone features (upstream's linear transfer).

One split (:func:`train_split`), as upstream's ``train_one_dataset.py`` with ``cover.yml``:

* trained: every parameter outside the backbones (the two cross-gates and three heads), with
  upstream's train-mode dropout in them; the backbones are not run at all -- their features come
  from the cache (:mod:`.features`), computed in eval mode;
* each epoch visits the training videos in a fresh random order, in batches of ``batch_size``,
  and takes for each video one of its cached clips at random (the augmentation: upstream samples
  new random offsets each time; here ``clips_per_video`` samples are drawn once and reused);
* loss :func:`.losses.cover_loss`, AdamW, warm-up + cosine (:mod:`.schedule`), an EMA of the
  weights; after each epoch the EMA and the raw weights are validated on the deterministic clip
  of each validation video (upstream's linear-rescale metrics,
  :func:`~cover_engine.runtime.eval.metrics.linear_metrics`);
* a snapshot is kept whenever ``SROCC + PLCC`` beats the sum of the best SROCC and best PLCC so
  far (upstream's saving rule); the best value of each metric is reported as upstream does.

Deliberate differences: one snapshot over both weight streams (upstream writes one file per
stream); a last batch of a single video is skipped (upstream's rank loss divides by zero on it);
clips are drawn from a fixed pool instead of anew; backbone features come from eval mode
(upstream's frozen backbones still run in train mode).

``unfreeze_epochs > 0`` continues end-to-end afterwards (upstream's ``num_epochs``): backbones
learn at ``lr * backbone_lr_mult``, views are decoded and sampled anew each step; that is for
small models or a GPU.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from cover_engine.runtime.constants import (BRANCHES, TRAIN_BACKBONE_LR_MULT, TRAIN_BATCH,
                                            TRAIN_EMA_DECAY, TRAIN_EPOCHS, TRAIN_LR,
                                            TRAIN_RANK_WEIGHT, TRAIN_SAMPLE_SEED,
                                            TRAIN_SPLIT_SEED, TRAIN_VAL_FRACTION,
                                            TRAIN_WARMUP_EPOCHS, TRAIN_WEIGHT_DECAY, ViewSpec)
from cover_engine.runtime.errors import CoverError
from cover_engine.runtime.eval.metrics import Metrics, linear_metrics
from ..cover import COVER
from .features import ClipFeatures
from .headfile import head_tensors, is_backbone, trained_names
from .losses import cover_loss
from .schedule import Ema, make_scheduler

__all__ = ["TrainConfig", "ClipBank", "EpochLog", "SplitResult", "train_split", "score_bank"]

Log = Callable[[str], None]
#: Clips per forward pass when scoring (validation): bounded memory at official sizes.
SCORE_BATCH = 16


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults are upstream's ``cover.yml``."""

    epochs: int = TRAIN_EPOCHS
    warmup_epochs: float = TRAIN_WARMUP_EPOCHS
    batch_size: int = TRAIN_BATCH
    lr: float = TRAIN_LR
    weight_decay: float = TRAIN_WEIGHT_DECAY
    backbone_lr_mult: float = TRAIN_BACKBONE_LR_MULT
    ema_decay: float = TRAIN_EMA_DECAY
    rank_weight: float = TRAIN_RANK_WEIGHT
    seed: int = TRAIN_SPLIT_SEED
    val_fraction: float = TRAIN_VAL_FRACTION
    splits: int = 1
    clips_per_video: int = 1
    sample_seed: int = TRAIN_SAMPLE_SEED
    unfreeze_epochs: int = 0

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 0 and self.unfreeze_epochs >= 0
                   and self.epochs + self.unfreeze_epochs > 0, "need at least one epoch"),
                  (self.batch_size >= 2, "batch size must be at least 2 (rank loss)"),
                  (0 < self.val_fraction < 1, "the validation fraction must be in (0, 1)"),
                  (self.splits >= 1, "need at least one split"),
                  (self.seed >= 1, "the split seed must be at least 1 (split i uses seed*(i+1))"),
                  (self.clips_per_video >= 1, "need at least one clip per video"),
                  (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0, weight decay >= 0"),
                  (0 <= self.ema_decay < 1, "the EMA decay must be in [0, 1)"),
                  (self.warmup_epochs >= 0, "warm-up epochs must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise CoverError(f"cover-train: {message}")

    def to_dict(self) -> dict:
        return asdict(self)


class ClipBank:
    """Cached features of a list of videos, each with one or more clips, plus their MOS.

    Features are stacked once into one tensor per branch and clip shape (images and videos have
    different shapes and run in separate forward passes; a batch may mix them), so a batch is an
    ``index_select``, not a Python loop. :meth:`subset` makes a split's train or validation part
    without copying features.
    """

    def __init__(self, names: Sequence[str], clips: Sequence[Sequence[ClipFeatures]],
                 mos: Sequence[float]):
        if not (len(names) == len(clips) == len(mos)):
            raise ValueError("names, clips and mos differ in length")
        by_shape: dict[tuple, list[ClipFeatures]] = {}
        self._rows: list[list[tuple[int, int]]] = []
        keys: list[tuple] = []
        for cs in clips:
            rows = []
            for c in cs:
                shape = tuple(getattr(c, b).shape for b in BRANCHES)
                if shape not in by_shape:
                    by_shape[shape] = []
                    keys.append(shape)
                rows.append((keys.index(shape), len(by_shape[shape])))
                by_shape[shape].append(c)
            self._rows.append(rows)
        self._groups = [{b: torch.from_numpy(np.stack([getattr(c, b) for c in by_shape[k]]))
                         for b in BRANCHES} for k in keys]
        self.names = list(names)
        self.mos = torch.tensor(np.asarray(mos, np.float64), dtype=torch.float32)

    def subset(self, names: Sequence[str]) -> "ClipBank":
        """The named videos (in that order), sharing this bank's features."""
        where = {n: i for i, n in enumerate(self.names)}
        out = object.__new__(ClipBank)
        out._groups = self._groups
        out._rows = [self._rows[where[n]] for n in names]
        out.names = list(names)
        out.mos = self.mos[[where[n] for n in names]] if names else self.mos[:0]
        return out

    def __len__(self) -> int:
        return len(self.names)

    def clip_count(self, i: int) -> int:
        return len(self._rows[i])

    def batch(self, items: Sequence[int], picks: Sequence[int]):
        """Groups ``(positions in the batch, stacked features)`` of the given (video, clip)."""
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for pos, (i, k) in enumerate(zip(items, picks)):
            g, r = self._rows[i][k]
            positions, rows = groups.setdefault(g, ([], []))
            positions.append(pos)
            rows.append(r)
        for g, (positions, rows) in groups.items():
            index = torch.tensor(rows)
            yield positions, {b: t.index_select(0, index) for b, t in self._groups[g].items()}


def _branch_means(model: COVER, feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    maps = model.heads(feats["semantic"], feats["technical"], feats["aesthetic"])
    return {b: maps[b].flatten(1).mean(1) for b in BRANCHES}


def _scores(model: COVER, bank: ClipBank, items: Sequence[int], picks: Sequence[int],
            device: torch.device) -> dict[str, torch.Tensor]:
    """Per-branch scores ``(len(items),)`` in batch order (grad flows when enabled)."""
    order, parts = [], {b: [] for b in BRANCHES}
    for positions, feats in bank.batch(items, picks):
        means = _branch_means(model, {b: v.to(device) for b, v in feats.items()})
        order.extend(positions)
        for b in BRANCHES:
            parts[b].append(means[b])
    back = torch.argsort(torch.tensor(order, device=device))
    return {b: torch.cat(v)[back] for b, v in parts.items()}


@torch.no_grad()
def score_bank(model: COVER, bank: ClipBank, device: torch.device, clip: int = 0) -> np.ndarray:
    """Overall scores (sum of branch means) of every video's clip ``clip``, eval mode."""
    was = model.training
    model.eval()
    out = []
    for start in range(0, len(bank), SCORE_BATCH):
        items = list(range(start, min(start + SCORE_BATCH, len(bank))))
        s = _scores(model, bank, items, [clip] * len(items), device)
        out.append(sum(s[b] for b in BRANCHES).double().cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    phase: str            # "heads" or "end-to-end"
    loss: float           # mean training loss over the epoch's steps
    raw: Metrics
    ema: Metrics
    seconds: float

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "phase": self.phase, "loss": self.loss,
                "raw": _metric_dict(self.raw), "ema": _metric_dict(self.ema),
                "seconds": self.seconds}


def _metric_dict(m: Metrics) -> dict:
    d = m.to_dict()
    return {k: d[k] for k in ("n", "srocc", "plcc", "krocc", "rmse")}


@dataclass
class SplitResult:
    """What one split's training produced."""

    index: int
    seed: int
    train: list[str]
    val: list[str]
    before: Metrics
    saved: Optional[Metrics] = None
    saved_from: str = ""          # "ema" or "raw"
    saved_epoch: int = 0
    best: tuple[float, float, float, float] = (-1.0, -1.0, -1.0, 1000.0)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[EpochLog] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"index": self.index, "seed": self.seed, "train": len(self.train),
                "val": len(self.val), "before": _metric_dict(self.before),
                "after": _metric_dict(self.saved) if self.saved else None,
                "saved_from": self.saved_from, "saved_epoch": self.saved_epoch,
                "best": dict(zip(("srocc", "plcc", "krocc", "rmse"), self.best)),
                "steps": self.steps, "seconds": round(self.seconds, 3)}


def _batches(order: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive batches; a last batch of one video is dropped (rank loss needs two)."""
    out = [list(order[i:i + size]) for i in range(0, len(order), size)]
    return [b for b in out if len(b) >= 2]


def set_trainable(model: COVER, unfrozen: bool) -> None:
    for name, child in model.named_children():
        child.requires_grad_(unfrozen or not is_backbone(name))


def _optimizer(model: COVER, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with upstream's per-module groups (backbones at ``lr * backbone_lr_mult``)."""
    groups = []
    for name, child in model.named_children():
        params = list(child.parameters())
        if not params:
            continue
        lr = cfg.lr * (cfg.backbone_lr_mult if is_backbone(name) else 1.0)
        groups.append({"params": params, "lr": lr})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _Best:
    """Upstream's bookkeeping: running best of each metric, and the snapshot rule."""

    def __init__(self) -> None:
        self.srocc, self.plcc, self.krocc, self.rmse = -1.0, -1.0, -1.0, 1000.0

    def improves(self, m: Metrics) -> bool:
        return m.srocc + m.plcc > self.srocc + self.plcc  # NaN never improves

    def update(self, m: Metrics) -> None:
        if not math.isnan(m.srocc):
            self.srocc, self.plcc = max(self.srocc, m.srocc), max(self.plcc, m.plcc)
            self.krocc, self.rmse = max(self.krocc, m.krocc), min(self.rmse, m.rmse)

    def values(self) -> tuple[float, float, float, float]:
        return self.srocc, self.plcc, self.krocc, self.rmse


def train_split(model: COVER, train: ClipBank, val: ClipBank, cfg: TrainConfig, *,
                index: int = 0, seed: int = TRAIN_SPLIT_SEED, device="cpu",
                end_to_end: Optional["EndToEnd"] = None, progress: Optional[bool] = None,
                log: Log = print) -> SplitResult:
    """Train on ``train``, validate on ``val``; the model ends with its starting weights.

    ``end_to_end`` is needed when ``cfg.unfreeze_epochs > 0`` (it loads views from the files).
    """
    from tqdm import tqdm

    device = torch.device(device)
    if cfg.unfreeze_epochs and end_to_end is None:
        raise ValueError("unfreeze_epochs needs an EndToEnd data source")
    unfrozen = cfg.unfreeze_epochs > 0
    names = trained_names(model, unfrozen=unfrozen)
    initial = head_tensors(model, names)
    started = time.perf_counter()
    val_mos = val.mos.double().numpy()
    result = SplitResult(index, seed, list(train.names), list(val.names),
                         before=linear_metrics(score_bank(model, val, device), val_mos))
    log(f"split {index + 1} (seed {seed}): {len(train)} training, {len(val)} validation videos; "
        f"before training: {_fmt(result.before)}")
    steps_per_epoch = len(_batches(range(len(train)), cfg.batch_size))
    total_epochs = cfg.epochs + cfg.unfreeze_epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    best = _Best()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout
            gen = torch.Generator().manual_seed(seed)
            set_trainable(model, False)
            optimizer = _optimizer(model, cfg)
            scheduler = make_scheduler(optimizer, warmup, int(total_epochs * steps_per_epoch))
            ema = Ema(model, cfg.ema_decay)
            bar = tqdm(total=total_epochs * steps_per_epoch, desc=f"split {index + 1}",
                       unit="step", disable=None if progress is None else not progress,
                       leave=False)
            for epoch in range(1, total_epochs + 1):
                phase = "heads" if epoch <= cfg.epochs else "end-to-end"
                if phase == "end-to-end" and epoch == cfg.epochs + 1:
                    set_trainable(model, True)
                    ema.track(model)
                t0 = time.perf_counter()
                order = torch.randperm(len(train), generator=gen).tolist()
                losses = []
                model.train()
                for batch in _batches(order, cfg.batch_size):
                    if phase == "heads":
                        picks = [int(torch.randint(train.clip_count(i), (1,), generator=gen))
                                 for i in batch]
                        scores = _scores(model, train, batch, picks, device)
                    else:
                        scores = end_to_end.scores(model, [train.names[i] for i in batch],
                                                   epoch, device)
                    loss = cover_loss(scores, train.mos[batch].to(device), cfg.rank_weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    ema.update(model)
                    losses.append(float(loss.detach()))
                    result.steps += 1
                    bar.update(1)
                model.eval()
                if phase == "heads":
                    raw_pred = score_bank(model, val, device)
                    with ema.applied(model):
                        ema_pred = score_bank(model, val, device)
                else:
                    raw_pred = end_to_end.val_scores(model, val.names, device)
                    with ema.applied(model):
                        ema_pred = end_to_end.val_scores(model, val.names, device)
                entry = EpochLog(epoch, phase, float(np.mean(losses)) if losses else float("nan"),
                                 linear_metrics(raw_pred, val_mos),
                                 linear_metrics(ema_pred, val_mos), time.perf_counter() - t0)
                result.history.append(entry)
                for stream, metrics in (("ema", entry.ema), ("raw", entry.raw)):
                    if best.improves(metrics):
                        with (ema.applied(model) if stream == "ema" else contextlib.nullcontext()):
                            result.state = head_tensors(model, names)
                        result.saved, result.saved_from, result.saved_epoch = metrics, stream, epoch
                    best.update(metrics)
                (bar.write if bar.disable is False else log)(
                    f"epoch {epoch}/{total_epochs} [{phase}] loss {entry.loss:.4f}  "
                    f"raw {_fmt(entry.raw)}  ema {_fmt(entry.ema)}")
            bar.close()
    finally:
        with torch.no_grad():  # leave the model as it came
            state = model.state_dict()
            for n, t in initial.items():
                state[n].copy_(t)
        set_trainable(model, False)
        model.eval()
    result.best = best.values()
    result.seconds = time.perf_counter() - started
    if result.saved is None:
        raise CoverError(f"split {index + 1}: no epoch gave a finite validation SROCC/PLCC "
                         "(constant predictions?); nothing to save")
    return result


def _fmt(m: Metrics) -> str:
    return f"SROCC {m.srocc:.4f} PLCC {m.plcc:.4f}"


class EndToEnd:
    """Views of the labelled videos for end-to-end epochs: random clips for training (fresh each
    step, reproducible from the seed), deterministic ones for validation."""

    def __init__(self, paths: Mapping[str, Path], specs: Mapping[str, ViewSpec], seed: int):
        self.paths = dict(paths)
        self.specs = dict(specs)
        self.seed = seed
        self._index = {n: i for i, n in enumerate(self.paths)}

    def _views(self, name: str, seed: Optional[int]) -> dict[str, np.ndarray]:
        from cover_engine.runtime.views.assemble import load_views

        views, _ = load_views(self.paths[name], self.specs, seed=seed)
        return {k: v[0] for k, v in views.items()}

    def _forward(self, model: COVER, views: Sequence[Mapping[str, np.ndarray]],
                 device: torch.device) -> dict[str, torch.Tensor]:
        out = {b: [] for b in BRANCHES}
        for v in views:  # one at a time: shapes may differ and memory stays bounded
            t = {k: torch.from_numpy(a[None]).to(device) for k, a in v.items()}
            maps = model(t["semantic"], t["technical"], t["aesthetic"])
            for b in BRANCHES:
                out[b].append(maps[b].flatten(1).mean(1)[0])
        return {b: torch.stack(v) for b, v in out.items()}

    def scores(self, model: COVER, names: Sequence[str], epoch: int,
               device: torch.device) -> dict[str, torch.Tensor]:
        views = [self._views(n, seed=self.seed * 1_000_003 + epoch * 100_003 + self._index[n])
                 for n in names]
        return self._forward(model, views, device)

    @torch.no_grad()
    def val_scores(self, model: COVER, names: Sequence[str], device: torch.device) -> np.ndarray:
        s = self._forward(model, [self._views(n, None) for n in names], device)
        return sum(s[b] for b in BRANCHES).double().cpu().numpy()
