"""Content fingerprints: how a resumed ``cover-batch`` knows a file is the one it scored.

A path alone is not enough (files get replaced or re-encoded in place) and a modification time
is not content (copies change it, ``rsync -t`` keeps it). Hashing every byte of a catalogue
again on every resume would cost as much I/O as the scoring run, so the default fingerprint
samples: the file size and :data:`SAMPLE_BLOCKS` blocks of :data:`SAMPLE_BLOCK` bytes spread
evenly from the first byte to the last (files up to ``SAMPLE_BLOCKS * SAMPLE_BLOCK`` bytes are
hashed whole). Re-encoding, truncation, appending and replacement change it; an edit of the
same size that touches only unsampled bytes does not -- ``full`` hashes every byte for that.
The kind is part of the string, so fingerprints of different kinds never compare equal.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

__all__ = ["FINGERPRINT_KINDS", "SAMPLE_BLOCK", "SAMPLE_BLOCKS", "fingerprint", "sample_offsets"]

#: Bytes per sampled block, and how many blocks the ``sampled`` kind reads (256 KiB per file).
SAMPLE_BLOCK = 16 * 1024
SAMPLE_BLOCKS = 16
FINGERPRINT_KINDS = ("sampled", "full")
_READ = 1 << 20


def sample_offsets(size: int, blocks: int = SAMPLE_BLOCKS, block: int = SAMPLE_BLOCK) -> list[int]:
    """Start offsets of the sampled blocks: evenly spaced, the first at 0, the last ending at EOF."""
    if size <= blocks * block:
        return [0] if size else []
    last = size - block
    return [round(i * last / (blocks - 1)) for i in range(blocks)]


def fingerprint(path: Union[str, Path], kind: str = "sampled") -> str:
    """``"<kind>:<size>:<blake2b-128 hex>"`` of the file's content (OSError if unreadable)."""
    if kind not in FINGERPRINT_KINDS:
        raise ValueError(f"unknown fingerprint kind {kind!r} (choose from {', '.join(FINGERPRINT_KINDS)})")
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(size.to_bytes(8, "little"))
        if kind == "full" or size <= SAMPLE_BLOCKS * SAMPLE_BLOCK:
            while chunk := f.read(_READ):
                digest.update(chunk)
        else:
            for offset in sample_offsets(size):
                f.seek(offset)
                digest.update(f.read(SAMPLE_BLOCK))
    return f"{kind}:{size}:{digest.hexdigest()}"
