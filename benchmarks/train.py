"""How long ``cover-train`` takes to train on N cached clips (the part after the feature pass).

Training runs only the cross-gates and heads on cached backbone features, so its cost depends on
the feature shapes (the config) and the number of clips, not on the weights or the videos. This
benchmark builds the model with its backbones on the ``meta`` device (no memory, never run),
gives the gates and heads real random weights, makes random cached features of the right shapes
and random MOS, and times :func:`~cover_engine.export.train.trainer.train_split` with upstream's
recipe (validation on 20 % of the clips included, as in a real run). Wall and process CPU time are
both reported, with the load average: on a shared machine the wall time says more about the
neighbours than about the code.

    python -m cover_engine.bench.train --config official --clips 300 --epochs 10
    python -m cover_engine.bench.train --config $COVER_VECTORS/model/config.json --clips 300

The feature pass is not included: it costs one backbone pass per clip (``cover-bench`` measures
that), once per clip, after which it is read from the cache.
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import date

import click
import numpy as np
import torch

from cover_engine.export.config import ModelConfig
from cover_engine.export.train.features import ClipFeatures
from cover_engine.export.train.headfile import is_backbone
from cover_engine.export.train.trainer import ClipBank, TrainConfig, train_split
from cover_engine.export.weights import build_meta

__all__ = ["heads_only_model", "feature_shapes", "bench"]


def heads_only_model(cfg: ModelConfig, seed: int = 0):
    """COVER with meta-device backbones and randomly initialised gates and heads."""
    torch.manual_seed(seed)
    model = build_meta(cfg)
    for name, child in model.named_children():
        if is_backbone(name):
            continue
        child.to_empty(device="cpu")
        for module in child.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def feature_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Per-clip feature shapes of each backbone for the config's inputs (computed on meta)."""
    model = build_meta(cfg)
    views = {b: torch.empty(cfg.inputs[b], device="meta") for b in cfg.inputs}
    with torch.no_grad():
        shapes = {"semantic": model.semantic_features(views["semantic"]).shape,
                  "technical": model.technical_features(views["technical"]).shape,
                  "aesthetic": model.aesthetic_features(views["aesthetic"]).shape}
    return {k: tuple(v[1:]) for k, v in shapes.items()}


def bench(cfg: ModelConfig, clips: int, epochs: int, threads: int, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    shapes = feature_shapes(cfg)
    rng = np.random.default_rng(seed)

    def bank(n: int) -> ClipBank:
        feats = [[ClipFeatures(**{b: rng.standard_normal(s).astype(np.float32)
                                  for b, s in shapes.items()})] for _ in range(n)]
        return ClipBank([f"clip{i}" for i in range(n)], feats, rng.uniform(1, 5, n))

    n_val = max(3, clips // 5)
    train, val = bank(clips - n_val), bank(n_val)
    model = heads_only_model(cfg, seed)
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train_split(model, train, val, TrainConfig(epochs=epochs), log=lambda m: None,
                         progress=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": threads,
            "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "clips": clips, "train_clips": len(train), "val_clips": len(val), "epochs": epochs,
            "steps": result.steps, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "seconds_per_epoch": round(seconds / epochs, 3),
            "feature_shapes": {k: list(v) for k, v in shapes.items()},
            "feature_mb_per_clip": round(sum(int(np.prod(s)) for s in shapes.values()) * 4 / 2**20, 2)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", default="official", show_default=True,
              help="'official' or a model config JSON.")
@click.option("--clips", type=click.IntRange(min=10), default=300, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=torch.get_num_threads(),
              show_default=True, help="torch intra-op threads.")
def main(config, clips, epochs, threads):
    """Time head-only training on N cached clips (random features of the config's shapes)."""
    cfg = ModelConfig.official() if config == "official" else ModelConfig.from_json(config)
    click.echo(json.dumps({"config": config, **bench(cfg, clips, epochs, threads)}, indent=1))


if __name__ == "__main__":
    main()
