"""``cover-train``: fit COVER's gates and heads to your own labelled videos (head-only transfer).

Examples::

    cover-train --labels mine/labels.txt --root mine/ --out mine-head.pth
    cover-train --labels mos.csv --name-column video --root clips/ --out head.pth --splits 10
    cover-run clips/new.mp4 --head mine-head.pth
    cover-export --head mine-head.pth --out engines/mine

The work is :func:`cover_engine.export.train.pipeline.train_heads` (torch side), imported inside
the command so that this module, like all of ``runtime``, imports without torch.
"""
from __future__ import annotations

from pathlib import Path

import click

from cover_engine.runtime.cli.common import command, cover_errors
from cover_engine.runtime.cli.options import (CheckedPath, Device, label_options, quiet_option,
                                              weight_options, writable_output)
from cover_engine.runtime.constants import (TRAIN_BATCH, TRAIN_EPOCHS, TRAIN_LR, TRAIN_SPLIT_SEED,
                                            TRAIN_VAL_FRACTION)

__all__ = ["main"]


@command()
@label_options()
@click.option("--out", required=True, type=CheckedPath(dir_okay=False, path_type=Path),
              callback=writable_output,
              help="Head file to write (only the trained tensors, with provenance).")
@weight_options(allow_random=False)
@click.option("--epochs", type=click.IntRange(min=1), default=TRAIN_EPOCHS, show_default=True,
              help="Head-only epochs (upstream's l_num_epochs).")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=TRAIN_VAL_FRACTION, show_default=True,
              help="Fraction of the videos held out for validation.")
@click.option("--splits", type=click.IntRange(min=1), default=1, show_default=True,
              help="Random splits to train and report (the head file holds the first).")
@click.option("--seed", type=click.IntRange(min=1), default=TRAIN_SPLIT_SEED, show_default=True,
              help="Split seed; split i shuffles with seed*(i+1), as upstream.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=TRAIN_LR,
              show_default=True, help="AdamW learning rate (weight decay 0.05).")
@click.option("--batch-size", type=click.IntRange(min=2), default=TRAIN_BATCH, show_default=True,
              help="Videos per step.")
@click.option("--clips-per-video", type=click.IntRange(min=1), default=1, show_default=True,
              help="Clips cached per training video (the deterministic one, then random ones): "
                   "augmentation; each costs one pass through the backbones, once.")
@click.option("--unfreeze", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="EPOCHS", help="Then train end to end for this many epochs (backbones at "
                                     "0.1x lr; runs the backbones every step: small models or GPU).")
@click.option("--device", type=Device(), default="cpu", show_default=True,
              help="cpu, cuda or cuda:N, for the feature pass and training.")
@click.option("--cache", type=CheckedPath(file_okay=False, path_type=Path),
              help="Feature cache folder (default: $COVER_HOME/features).")
@quiet_option
def main(labels_path, root, fmt, name_column, mos_column, out, weights, clip_weights, config,
         epochs, val_split, splits, seed, lr, batch_size, clips_per_video, unfreeze, device, cache,
         quiet):
    """Train COVER's cross-gates and heads on a labelled video set, backbones frozen.

    Each video's backbone features are computed once per clip and cached (interrupted runs
    resume), then the gates and heads are trained as upstream's train_one_dataset.py does:
    PLCC + 0.3 x rank loss per branch, AdamW, warm-up + cosine, EMA, best validation kept.
    Writes only the trained tensors, with their provenance, to --out.
    """
    log = (lambda msg: None) if quiet else click.echo
    with cover_errors():
        try:
            from cover_engine.export.train.pipeline import train_heads
            from cover_engine.export.train.trainer import TrainConfig
        except ImportError as exc:
            raise click.ClickException(f"cover-train needs torch ({exc}); "
                                       "pip install 'cover-engine[export]'") from None
        settings = TrainConfig(epochs=epochs, val_fraction=val_split, splits=splits, seed=seed,
                               lr=lr, batch_size=batch_size, clips_per_video=clips_per_video,
                               unfreeze_epochs=unfreeze)
        try:
            train_heads(labels_path, root, out, config=config, weights=weights,
                        clip_weights=clip_weights, train=settings, device=device, cache=cache,
                        fmt=fmt, name_column=name_column, mos_column=mos_column,
                        progress=False if quiet else None, log=log)
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; the features computed so far are cached, "
                                       f"run the same command again to go on ({out} not written)"
                                       ) from None


if __name__ == "__main__":  # pragma: no cover
    main()
