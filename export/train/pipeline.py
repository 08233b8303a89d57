"""``cover-train`` end to end: labels -> splits -> cached features -> training -> head file.

:func:`train_heads` is what the command runs; tests call it directly. Order of work, so that
nothing is wasted and nothing is half-written: the label file is checked first (one line per
problem), then the model is loaded, then every needed clip's features are computed or taken
from the cache (unreadable videos listed and skipped), then each split is trained, and only
then is the head file written, atomically, once.
"""
from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from cover_engine import __version__
from cover_engine.runtime.constants import views_for_inputs
from cover_engine.runtime.hashing import sha256_file
from cover_engine.runtime.durable import check_output_file
from cover_engine.runtime.errors import CoverError
from ..config import ModelConfig
from ..cover import COVER
from .dataset import LabelledSet, check_count, check_split, load_labelled, make_split
from .features import (FeatureCache, FeaturePass, cache_setup, default_cache_dir,
                       extract_features, needed_clips)
from .headfile import save_head
from .trainer import ClipBank, EndToEnd, SplitResult, TrainConfig, train_split

__all__ = ["TrainReport", "train_heads"]

Log = Callable[[str], None]


@dataclass
class TrainReport:
    """What :func:`train_heads` did: the head file, each split's result, what was left out."""

    head: Path
    head_sha256: str
    results: list[SplitResult]
    features: FeaturePass
    missing: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)


def train_heads(labels, root, out, *, config=None, weights=None, clip_weights=None,
                train: TrainConfig = TrainConfig(), device: str = "cpu",
                cache: Union[None, str, Path] = None, fmt: str = "auto",
                name_column: Optional[str] = None, mos_column: Optional[str] = None,
                model: Optional[COVER] = None, weight_info: Optional[dict] = None,
                progress: Optional[bool] = None, log: Log = print) -> TrainReport:
    """Train COVER's gates and heads on a labelled set and write the head file ``out``.

    ``model`` + ``weight_info`` (as :func:`~cover_engine.export.weights.weight_identity`) skip
    loading the model from ``config``/``weights``/``clip_weights``; the model's config must be
    ``model.config``.
    """
    out = Path(out)
    check_output_file(out, "--out")  # before minutes of work, not after
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CoverError("--device cuda asked for, but torch sees no CUDA GPU here")
    labelled = load_labelled(labels, root, fmt=fmt, name_column=name_column,
                             mos_column=mos_column)
    for name in labelled.missing:
        log(f"cover-train: {name}: not found under {root}; skipped")

    if model is None:
        from ..backend_torch import build_model
        from ..weights import weight_identity

        model, cfg = build_model(config, weights=weights, clip_weights=clip_weights)
        weight_info = weight_identity(cfg, *model.weight_files)
    else:
        cfg = model.config
        if weight_info is None:
            raise ValueError("a given model needs its weight_info")
    if train.unfreeze_epochs and device == "cpu" and cfg == ModelConfig.official():
        log("cover-train: --unfreeze on a CPU with the official model runs the backbones at "
            "every step: expect hours per epoch")
    model = model.to(device).eval()
    specs = views_for_inputs(cfg.inputs)

    names = [item.name for item in labelled.items]
    splits = [make_split(names, train.seed, i, train.val_fraction) for i in range(train.splits)]
    trained_on = {n for s in splits for n in s.train}
    feature_cache = FeatureCache(cache or default_cache_dir(),
                                 cache_setup(cfg.to_dict(), weight_info, specs))
    wanted = needed_clips(labelled.paths, trained_on, train.clips_per_video, train.sample_seed)
    log(f"cover-train: {len(labelled.paths)} videos, {sum(map(len, wanted.values()))} clips; "
        f"feature cache {feature_cache.dir}")
    fp = extract_features(model, feature_cache, labelled.paths, wanted, specs, device=device,
                          progress=progress, log=log)
    for name, why in fp.failed:
        log(f"cover-train: {labelled.paths[name]}: {why}; skipped")
    log(f"cover-train: features of {fp.computed} clip(s) computed in {fp.seconds:.1f} s, "
        f"{fp.cached} from the cache")
    usable = {n for n in labelled.paths if n in fp.hashes and n not in dict(fp.failed)}
    check_count(labelled.labels, len(usable), len(labelled.items))

    # one bank of every usable video (the deterministic clip first), split parts are views of it
    names = [n for n in names if n in usable]
    bank = ClipBank(names, [[fp.features[fp.hashes[n], c] for c in wanted[n]] for n in names],
                    labelled.mos(names))
    fp.features.clear()  # the bank holds them now (stacked); do not keep two copies

    results = []
    for split in splits:
        split = check_split(labelled, split, usable)
        train_bank, val_bank = bank.subset(split.train), bank.subset(split.val)
        e2e = EndToEnd({n: labelled.paths[n] for n in split.train + split.val}, specs,
                       split.seed) if train.unfreeze_epochs else None
        results.append(train_split(model, train_bank, val_bank, train, index=split.index,
                                   seed=split.seed, device=device, end_to_end=e2e,
                                   progress=progress, log=log))
    first = results[0]
    provenance = _provenance(labelled, cfg, weight_info, train, results, fp, feature_cache)
    sha = save_head(out, first.state, provenance,
                    (first.saved.srocc, first.saved.plcc, first.saved.krocc, first.saved.rmse))
    if len(results) > 1:
        log(_splits_line(results))
    log(f"cover-train: before training SROCC {first.before.srocc:.4f} PLCC "
        f"{first.before.plcc:.4f}; after ({first.saved_from} weights, epoch "
        f"{first.saved_epoch}) SROCC {first.saved.srocc:.4f} PLCC {first.saved.plcc:.4f} "
        f"on {len(first.val)} validation videos")
    log(f"cover-train: wrote {out} (sha256 {sha[:12]}…, {len(first.state)} tensors)")
    return TrainReport(out, sha, results, fp, list(labelled.missing), provenance)


def _splits_line(results: list[SplitResult]) -> str:
    s = [r.saved.srocc for r in results]
    p = [r.saved.plcc for r in results]
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    return (f"cover-train: {len(results)} splits: SROCC {np.mean(s):.4f} ± {sd(s):.4f}, "
            f"PLCC {np.mean(p):.4f} ± {sd(p):.4f} (the head file holds split 1)")


def _provenance(labelled: LabelledSet, cfg: ModelConfig, weight_info: dict, train: TrainConfig,
                results: list[SplitResult], fp: FeaturePass, cache: FeatureCache) -> dict:
    first = results[0]
    summary = first.summary()
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trained": "all" if train.unfreeze_epochs else "heads",
        "base": {"config": cfg.to_dict(), "weights": weight_info},
        "labels": {"file": str(labelled.labels), "sha256": sha256_file(labelled.labels),
                   "videos": len(labelled.items), "missing": list(labelled.missing),
                   "unreadable": [list(f) for f in fp.failed]},
        "split": {"index": first.index, "seed": first.seed, "val_fraction": train.val_fraction,
                  "train": first.train, "val": first.val},
        "metrics": {"protocol": "upstream train_one_dataset: linear rescale, then "
                                "SROCC/PLCC/KROCC/RMSE on the validation part",
                    "before": summary["before"], "after": summary["after"],
                    "saved_from": first.saved_from, "saved_epoch": first.saved_epoch,
                    "best": summary["best"],
                    "history": [e.to_dict() for e in first.history]},
        "splits": [r.summary() for r in results],
        "training": train.to_dict(),
        "features": {"cache": cache.digest, "clips_per_video": train.clips_per_video,
                     "sample_seed": train.sample_seed},
        "tools": {"cover_engine": __version__, "torch": torch.__version__,
                  "numpy": np.__version__, "python": platform.python_version()},
    }
