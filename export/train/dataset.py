"""The labelled set of ``cover-train``: reading, checking, and upstream's random splits.

Label files are read and checked as ``cover-eval`` reads them
(:mod:`cover_engine.runtime.eval.labels`: a finite MOS on every line, one name per file). Further
checks, each one line naming the file: the MOS not all equal (there is nothing to rank); at least
:data:`TRAIN_MIN_VIDEOS` videos that exist. Files that are missing
are listed and left out; unreadable ones are found (and left out) by the feature pass.

Splits reproduce upstream's ``train_test_split``: the label file's order shuffled by Python's
``random`` seeded with ``seed * (i + 1)`` for split ``i``, the first ``int(ratio * n)`` videos
for training (``ratio = 1 - val_fraction``), the rest for validation. The shuffle covers every
labelled video, missing ones included, so the same seed gives upstream's split of the same
label file; missing and unreadable videos are then dropped from their side.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cover_engine.runtime.constants import TRAIN_MIN_VAL_VIDEOS, TRAIN_MIN_VIDEOS
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.eval.labels import (LabelItem, check_distinct_files, locate,
                                              read_labels)

__all__ = ["LabelledSet", "Split", "load_labelled", "make_split", "check_split"]


@dataclass(frozen=True)
class LabelledSet:
    """Labelled items in label-file order; ``paths`` has the ones whose file exists."""

    labels: Path
    items: tuple[LabelItem, ...]
    paths: dict[str, Path]
    missing: tuple[str, ...]

    def mos(self, names: Sequence[str]) -> np.ndarray:
        by_name = {i.name: i.mos for i in self.items}
        return np.array([by_name[n] for n in names], dtype=np.float64)


def load_labelled(labels, root, *, fmt: str = "auto", name_column: Optional[str] = None,
                  mos_column: Optional[str] = None) -> LabelledSet:
    """Read and check a label file; find each video under ``root``."""
    labels = Path(labels)
    items = read_labels(labels, fmt, name_column=name_column, mos_column=mos_column)
    check_distinct_files(labels, items, root)  # (read_labels refuses NaN and infinite MOS)
    values = {item.mos for item in items}
    if len(values) == 1:
        raise InputError(f"{labels}: every MOS is {items[0].mos}: a constant MOS gives nothing "
                         "to learn (training fits the ranking and correlation of scores to MOS)")
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for item in items:
        path = locate(root, item.name)
        if path is None:
            missing.append(item.name)
        else:
            paths[item.name] = path
    check_count(labels, len(paths), len(items))
    return LabelledSet(labels, tuple(items), paths, tuple(missing))


def check_count(labels: Path, usable: int, listed: int) -> None:
    if usable < TRAIN_MIN_VIDEOS:
        raise InputError(f"{labels}: {usable} usable labelled video(s) of {listed} listed; "
                         f"training needs at least {TRAIN_MIN_VIDEOS}")


@dataclass(frozen=True)
class Split:
    """One train/validation split (names in shuffled order, as upstream's lists)."""

    index: int
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]


def make_split(names: Sequence[str], seed: int, index: int = 0,
               val_fraction: float = 0.2) -> Split:
    """Upstream's ``train_test_split`` of split ``index`` (seed ``seed * (index + 1)``)."""
    split_seed = seed * (index + 1)
    shuffled = list(names)
    random.Random(split_seed).shuffle(shuffled)
    cut = int((1 - val_fraction) * len(shuffled))
    return Split(index, split_seed, tuple(shuffled[:cut]), tuple(shuffled[cut:]))


def check_split(labelled: LabelledSet, split: Split, usable: set[str]) -> Split:
    """The split without unusable videos; refuse one that cannot train or validate."""
    train = tuple(n for n in split.train if n in usable)
    val = tuple(n for n in split.val if n in usable)
    where = f"{labelled.labels}: split {split.index + 1} (seed {split.seed})"
    if len(val) < TRAIN_MIN_VAL_VIDEOS:
        raise InputError(f"{where} has {len(val)} usable validation video(s); need at least "
                         f"{TRAIN_MIN_VAL_VIDEOS} (label more videos or raise --val-split)")
    if len(train) < 2:
        raise InputError(f"{where} has {len(train)} usable training video(s); need at least 2")
    if np.ptp(labelled.mos(train)) == 0:
        raise InputError(f"{where}: every training MOS is {labelled.mos(train)[0]}; nothing to learn")
    return Split(split.index, split.seed, train, val)
