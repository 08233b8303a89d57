"""sha256 of files, read in chunks: weight files are checked against published digests and
engine folders against their manifests with this one function."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

__all__ = ["sha256_file", "sha256_of"]

#: Read size; large enough that hashing the 890 MB CLIP archive is bound by the disk.
CHUNK = 1 << 20


def sha256_of(path: Union[str, "os.PathLike[str]"]) -> "hashlib._Hash":
    """A sha256 object fed with the whole file (callers that go on hashing appended bytes
    -- a resumed download -- keep feeding it)."""
    hasher = hashlib.sha256()
    with open(Path(path), "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher


def sha256_file(path: Union[str, "os.PathLike[str]"]) -> str:
    """Hex sha256 of a file."""
    return sha256_of(path).hexdigest()
