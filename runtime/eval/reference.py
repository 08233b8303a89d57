"""Percentiles without labels: where a score stands among a reference set's raw scores.

``cover-eval --reference-distribution DIST.json`` keeps the sorted raw scores of a set (overall
and each branch); ``cover-run --percentile-of DIST.json`` then reports, per file, the share of
the reference set scoring below it, 0-100 (ties count half: the mid-rank percentile, so a score
equal to every reference score is 50, one below them all 0, one above them all 100). Like a
calibration, a distribution belongs to one model and is refused for another's scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from cover_engine.runtime.constants import BRANCHES, MIN_REFERENCE_VIDEOS
from cover_engine.runtime.eval.calibration import (CalibrationError, read_json, refuse_other_model,
                                                  write_json_atomic)
from cover_engine.runtime.eval.calibration_schema import MODEL_WEIGHTS, SAMPLING, check_document
from cover_engine.runtime.model_identity import ModelIdentity

__all__ = ["ReferenceDistribution", "build_reference", "load_reference", "percentile_of",
           "REFERENCE_SCHEMA"]

SCHEMA_ID = "cover-engine-reference"
SCHEMA_VERSION = 1
TARGETS: tuple[str, ...] = ("overall",) + BRANCHES
RULE = "percentile = 100 * (count(reference < x) + count(reference == x) / 2) / n"


def percentile_of(sorted_scores: np.ndarray, x) -> np.ndarray:
    """Mid-rank percentile (0-100) of ``x`` among ``sorted_scores`` (ascending)."""
    below = np.searchsorted(sorted_scores, x, side="left")
    through = np.searchsorted(sorted_scores, x, side="right")
    return 100.0 * (below + (through - below) / 2.0) / len(sorted_scores)


@dataclass(frozen=True)
class ReferenceDistribution:
    """The sorted raw scores of a reference set, per target, and the model they came from."""

    name: str
    scores: dict[str, np.ndarray]
    identity: ModelIdentity
    sampling: dict
    created: str = ""
    source: Optional[str] = None
    backend: Optional[str] = None
    tools: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.scores["overall"])

    def percentile(self, x, target: str = "overall") -> np.ndarray:
        return percentile_of(self.scores[target], np.asarray(x, np.float64))

    def percentile_one(self, x: float, target: str = "overall") -> float:
        return float(self.percentile(np.float64(x), target))

    def check(self, identity: ModelIdentity, *, source: str = "") -> None:
        """Refuse scores of another model (:class:`CalibrationError` naming what differs)."""
        refuse_other_model(self.identity, identity, source,
                           f"reference distribution {self.name!r} holds scores of",
                           "Make one for this model with `cover-eval --reference-distribution`")

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION, "name": self.name,
                "created": self.created, "rule": RULE, "n": self.n, "source": self.source,
                "weights": self.identity.to_dict(),
                "sampling": {**self.sampling, "views": self.identity.views},
                "backend": self.backend, "tools": dict(self.tools),
                "scores": {t: [float(v) for v in self.scores[t]] for t in TARGETS}}

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "reference") -> "ReferenceDistribution":
        check_document(data, schema=REFERENCE_SCHEMA, schema_id=SCHEMA_ID, version=SCHEMA_VERSION,
                       kind="reference distribution", source=source, error=CalibrationError)
        scores = {}
        for t in TARGETS:
            values = np.asarray(data["scores"][t], np.float64)
            if values.size != data["n"] or not np.all(np.isfinite(values)) \
                    or np.any(np.diff(values) < 0):
                raise CalibrationError(f"{source}: the {t} scores must be {data['n']} finite "
                                       "numbers in ascending order")
            scores[t] = values
        return cls(name=data["name"], scores=scores, created=data["created"],
                   identity=ModelIdentity(base=data["weights"]["base"],
                                          head=data["weights"]["head"],
                                          views=data["sampling"]["views"]),
                   sampling={k: v for k, v in data["sampling"].items() if k != "views"},
                   source=data.get("source"), backend=data.get("backend"),
                   tools=dict(data.get("tools") or {}))

    def save(self, path) -> Path:
        return write_json_atomic(path, self.to_dict())


def load_reference(path) -> ReferenceDistribution:
    """Read a reference distribution (one clear error naming the file if it is not one)."""
    return ReferenceDistribution.from_dict(read_json(path, "reference distribution"), str(path))


def build_reference(scores: Mapping[str, Sequence[float]], *, name: str, identity: ModelIdentity,
                    sampling: Mapping[str, Any], source: Optional[str] = None,
                    backend: Optional[str] = None,
                    min_videos: int = MIN_REFERENCE_VIDEOS) -> ReferenceDistribution:
    """A distribution from raw scores per target; refused below ``min_videos`` or non-finite."""
    from cover_engine.runtime.eval.calibration import _tools

    arrays = {t: np.sort(np.asarray(scores[t], np.float64).ravel()) for t in TARGETS}
    n = len(arrays["overall"])
    if n < min_videos:
        raise CalibrationError(f"{n} scored videos are too few for a reference distribution: at "
                               f"least {min_videos} are needed")
    for t, values in arrays.items():
        if len(values) != n or not np.all(np.isfinite(values)):
            raise CalibrationError(f"the {t} scores are not {n} finite numbers")
    return ReferenceDistribution(
        name=name, scores=arrays, identity=identity, sampling=dict(sampling),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), source=source,
        backend=backend, tools=_tools())


_SCORES = {"type": "array", "items": {"type": "number"}}

#: JSON Schema (draft 2020-12) of a reference distribution file.
REFERENCE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cover-engine reference distribution",
    "type": "object",
    "required": ["schema", "schema_version", "name", "created", "rule", "n", "weights",
                 "sampling", "scores"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "minLength": 1},
        "created": {"type": "string"},
        "rule": {"type": "string"},
        "n": {"type": "integer", "minimum": 1},
        "source": {"type": ["string", "null"]},
        "weights": MODEL_WEIGHTS,
        "sampling": SAMPLING,
        "backend": {"type": ["string", "null"]},
        "tools": {"type": "object"},
        "scores": {
            "type": "object", "required": list(TARGETS),
            "properties": {t: _SCORES for t in TARGETS},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
