"""Where ``cover-run`` keeps the export it makes for itself: one folder name per setting.

The name must change whenever the export would (config, precision, weights, manifest schema)
and must be cheap to compute: no weight file is hashed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_WEIGHTS
from cover_engine.runtime.engines.manifest import SCHEMA_VERSION
from cover_engine.runtime.safe_json import loads_strict

__all__ = ["engine_cache_name"]


def engine_cache_name(*, weights=None, clip_weights=None, config=None,
                      random_weights: bool = False, precision: str = "fp32",
                      head_sha256: Optional[str] = None) -> str:
    """A folder name for the cached export of these settings (cheap: no weight hashing).

    Explicit weight paths enter by absolute path, size and modification time, so replacing a file
    gives a new name; the default (verified) weights enter by their official checksums. A head
    file (small) enters by its sha256.
    """
    def weight_id(path, official) -> Any:
        if random_weights:
            return "random"
        if path is None:
            return official.sha256
        p = Path(path).expanduser().resolve()
        st = p.stat() if p.exists() else None
        return [str(p), st.st_size if st else None, st.st_mtime_ns if st else None]

    if config is None:
        cfg: Any = "official"
    elif isinstance(config, Mapping):
        cfg = dict(config)
    elif hasattr(config, "to_dict"):
        cfg = config.to_dict()
    else:
        try:
            cfg = loads_strict(Path(config).read_bytes())
        except (OSError, ValueError):
            cfg = str(Path(config).resolve())
    key = json.dumps({"schema": SCHEMA_VERSION, "config": cfg, "precision": precision,
                      "cover": weight_id(weights, COVER_WEIGHTS),
                      "clip": weight_id(clip_weights, CLIP_WEIGHTS),
                      **({"head": head_sha256} if head_sha256 else {})}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    base = "official" if config is None else "custom"
    return (f"{'random' if random_weights else base}{'-head' if head_sha256 else ''}-{precision}"
            f"-{digest}")
