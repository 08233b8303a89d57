"""Which model produced a set of scores: the weights' sha256 and the sampling settings.

A calibration or a reference distribution describes the scores of one model; applied to the
scores of another (other weights, another head, other view sizes) it would silently mean
something else. Both therefore record a :class:`ModelIdentity`, and are refused where the
identity differs. Weights are compared by sha256 only (file names and paths do not matter):
the same numbers as an export's manifest records (``weights``), so an engine folder, the torch
backend and ``cover-eval``'s options all name a model the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from cover_engine.runtime.constants import (CLIP_WEIGHTS, COVER_WEIGHTS, OFFICIAL_VIEWS, ViewSpec,
                                            WeightFile, views_for_inputs)
from cover_engine.runtime.errors import InputError

__all__ = ["ModelIdentity", "identity_of_backend", "identity_from_options", "weight_record"]


def _views_dict(views: Mapping[str, ViewSpec]) -> dict[str, dict]:
    return {name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.to_dict().items()}
            for name, spec in views.items()}


@dataclass(frozen=True)
class ModelIdentity:
    """``base``: the manifest's ``weights`` form, ``{"cover": {"file", "sha256"}, "clip": {...}}``
    or ``{"random_seed": n}``; ``head``: ``{"file", "sha256"}`` of a separately loaded quality
    head, or None; ``views``: each branch's sample settings (``ViewSpec`` as a dict)."""

    base: dict
    views: dict
    head: Optional[dict] = None

    @classmethod
    def of(cls, base: Mapping, views: Mapping[str, ViewSpec],
           head: Optional[Mapping] = None) -> "ModelIdentity":
        return cls(json.loads(json.dumps(dict(base))), _views_dict(views),
                   dict(head) if head else None)

    def to_dict(self) -> dict:
        return {"base": self.base, "head": self.head}

    @staticmethod
    def _digests(weights: Optional[Mapping]) -> Any:
        """What identifies weights: the sha256 per role, or the random seed."""
        if not weights:
            return None
        if "random_seed" in weights:
            return ("random", weights["random_seed"])
        if "sha256" in weights:
            return weights["sha256"]
        return tuple(sorted((k, v.get("sha256")) for k, v in weights.items()
                            if isinstance(v, Mapping)))

    def mismatch(self, other: "ModelIdentity") -> Optional[str]:
        """Why scores of ``other`` cannot be read as scores of this model (None: they can)."""
        if self._digests(self.base) != self._digests(other.base):
            return f"other base weights ({describe(self.base)} vs {describe(other.base)})"
        if self._digests(self.head) != self._digests(other.head):
            return f"another head ({describe(self.head)} vs {describe(other.head)})"
        if self.views != other.views:
            changed = sorted(b for b in set(self.views) | set(other.views)
                             if self.views.get(b) != other.views.get(b))
            return f"other sample settings for the {', '.join(changed)} view(s)"
        return None


def describe(weights: Optional[Mapping]) -> str:
    """Short human form: ``cover 43a0fc77…, clip b8cca3fd…`` / ``random seed 0`` / ``none``."""
    if not weights:
        return "none"
    if "random_seed" in weights:
        return f"random seed {weights['random_seed']}"
    if "sha256" in weights:
        return f"{weights.get('file', 'head')} {str(weights['sha256'])[:12]}…"
    return ", ".join(f"{k} {str(v.get('sha256'))[:12]}…" for k, v in weights.items()
                     if isinstance(v, Mapping))


def weight_record(path, wf: Optional[WeightFile] = None) -> dict:
    """``{"file", "sha256"}`` of a weight file; a file ``cover-fetch`` already verified as the
    official ``wf`` is not hashed again (its checksum sidecar vouches for it)."""
    from cover_engine.runtime.fetch import verify
    from cover_engine.runtime.hashing import sha256_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weight file not found")
    if wf is not None and verify(path, wf) is None:  # cheap once cover-fetch vouched for it
        return {"file": path.name, "sha256": wf.sha256}
    return {"file": path.name, "sha256": sha256_file(path)}


def identity_of_backend(backend) -> ModelIdentity:
    """The identity of a built backend: an engine folder's manifest, or the torch model's files."""
    manifest = getattr(backend, "manifest", None)
    if manifest is not None:
        return ModelIdentity.of(manifest.weights, manifest.views,
                                _manifest_head(manifest) or _head_of(backend))
    model = getattr(backend, "model", None)
    files = getattr(model, "weight_files", "absent")
    if files == "absent":
        raise InputError(f"backend {getattr(backend, 'name', backend)!r} does not say which "
                         "weights it runs")
    if files is None:
        base = {"random_seed": int(getattr(backend, "random_seed", 0) or 0)}
    else:
        base = {"cover": weight_record(files[0], COVER_WEIGHTS),
                "clip": weight_record(files[1], CLIP_WEIGHTS)}
    return ModelIdentity.of(base, backend.specs, _head_of(backend))


def _head_of(backend) -> Optional[dict]:
    head = getattr(backend, "head_identity", None)
    return head() if callable(head) else head


def _manifest_head(manifest) -> Optional[dict]:
    """``{"file", "sha256"}`` of the cover-train head an export carries (None: its own)."""
    head = getattr(manifest, "head", None)
    return {"file": head["file"], "sha256": head["sha256"]} if head else None


def head_record(path) -> dict:
    """``{"file", "sha256"}`` of a cover-train head file."""
    from cover_engine.runtime.engines.head import head_sha256

    return {"file": Path(path).name, "sha256": head_sha256(path)}


def identity_from_options(*, backend: str = "auto", engines=None, weights=None,
                          clip_weights=None, config=None, random_weights: bool = False,
                          head=None, **_ignored) -> ModelIdentity:
    """The identity ``make_backend`` with these options would have, without building it (so a
    finished ``cover-eval`` run can be calibrated without loading a model). An engine folder
    speaks for itself; otherwise the weights are resolved as ``make_backend`` resolves them and
    the views follow the config's input sizes, as the export or the torch model would."""
    from cover_engine.runtime.fetch import resolve_weights

    if engines is not None and backend != "torch":
        from cover_engine.runtime.engines.manifest import load_manifest

        manifest = load_manifest(engines, verify_files=False)
        return ModelIdentity.of(manifest.weights, manifest.views, _manifest_head(manifest))
    views = dict(OFFICIAL_VIEWS)
    if config is not None:
        try:
            data = json.loads(Path(config).read_text()) if not isinstance(config, Mapping) \
                else dict(config)
            views = views_for_inputs(data.get("inputs"))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise InputError(f"{config}: not a readable model config ({exc})") from None
    head_id = head_record(head) if head is not None else None
    if random_weights:
        return ModelIdentity.of({"random_seed": 0}, views, head_id)
    official = config is None
    base = {"cover": weight_record(resolve_weights(COVER_WEIGHTS, weights, official=official),
                                   COVER_WEIGHTS if official else None),
            "clip": weight_record(resolve_weights(CLIP_WEIGHTS, clip_weights, official=official),
                                  CLIP_WEIGHTS if official else None)}
    return ModelIdentity.of(base, views, head_id)
