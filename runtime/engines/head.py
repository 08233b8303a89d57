"""Which ``cover-train`` head an engine folder carries, checked without torch.

A head file is baked into the graphs at export time (``cover-export --head``), and the manifest
names it with its sha256. When ``cover-run``/``cover-eval`` are given ``--head`` together with an
engine folder, the folder must carry exactly that file: scoring with other heads than asked for
would be silent and wrong. Reading the head file itself needs torch; its checksum does not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from cover_engine.runtime.engines.manifest import Manifest
from cover_engine.runtime.errors import EngineError, WeightsError
from cover_engine.runtime.hashing import sha256_file

__all__ = ["head_sha256", "check_engine_head"]


def head_sha256(path: Union[str, Path]) -> str:
    """sha256 of a head file; :class:`WeightsError` in one line when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: head file not found")
    try:
        return sha256_file(path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read head file ({exc.strerror or exc})") from None


def check_engine_head(manifest: Manifest, folder: Union[str, Path],
                      head: Optional[Union[str, Path]]) -> None:
    """Refuse an engine folder that does not carry the head file asked for (None: no demand)."""
    if head is None:
        return
    digest = head_sha256(head)
    carried = manifest.head
    redo = f"re-export with `cover-export --head {head}`"
    if carried is None:
        raise EngineError(f"{folder}: these engines were exported without a head file, but "
                          f"--head {head} was given; {redo}")
    if carried.get("sha256") != digest:
        raise EngineError(f"{folder}: these engines carry head {carried.get('file')} (sha256 "
                          f"{str(carried.get('sha256'))[:12]}…), not {head} (sha256 "
                          f"{digest[:12]}…); {redo}")
