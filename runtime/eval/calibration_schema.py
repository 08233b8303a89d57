"""The calibration file's format (``cover-engine-calibration``, version 1) as a JSON Schema.

Kept apart from the fitting code so that the manifest, which embeds a calibration, can check
one without importing scipy. :mod:`.calibration` reads and writes the files.
"""
from __future__ import annotations

from typing import Any, Mapping

from cover_engine.runtime.constants import BRANCHES

__all__ = ["SCHEMA_ID", "SCHEMA_VERSION", "FORMULA", "CALIBRATION_SCHEMA", "MODEL_WEIGHTS",
           "SAMPLING", "check_document"]

SCHEMA_ID = "cover-engine-calibration"
SCHEMA_VERSION = 1
#: The formula in words, written into every calibration file (and manifest) for other hosts.
FORMULA = "mos = b2 + (b1 - b2) / (1 + exp(-(x - b3) / abs(b4))), x = raw score of the target"

_NUMBER = {"type": "number"}
_FIT = {
    "oneOf": [{"type": "null"}, {
        "type": "object", "required": ["b1", "b2", "b3", "b4", "rmse", "plcc", "srocc"],
        "properties": {k: _NUMBER for k in ("b1", "b2", "b3", "b4", "rmse", "plcc", "srocc")},
        "additionalProperties": False,
    }],
}
_WEIGHTS = {"oneOf": [{"type": "null"}, {"type": "object"}]}
#: Which model made the scores (:class:`~cover_engine.runtime.model_identity.ModelIdentity`) and
#: how they were sampled: shared by calibrations and reference distributions, which are refused
#: for another model's scores.
MODEL_WEIGHTS: dict[str, Any] = {
    "type": "object", "required": ["base", "head"],
    "properties": {"base": {"type": "object"}, "head": _WEIGHTS},
    "additionalProperties": False,
}
SAMPLING: dict[str, Any] = {
    "type": "object", "required": ["seed", "clips", "views"],
    "properties": {"seed": {"type": ["integer", "null"]},
                   "clips": {"type": "integer", "minimum": 1},
                   "colour": {"type": "string"},
                   "views": {"type": "object"}},
}

#: JSON Schema (draft 2020-12) of a calibration file, also embedded in manifests.
CALIBRATION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cover-engine calibration",
    "type": "object",
    "required": ["schema", "schema_version", "name", "created", "formula", "input", "fits",
                 "fit_errors", "n", "mos", "weights", "sampling"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "minLength": 1},
        "created": {"type": "string"},
        "formula": {"type": "string"},
        "input": {"type": "string"},
        "fits": {
            "type": "object", "required": ["overall"],
            "properties": {"overall": _FIT["oneOf"][1], **{b: _FIT for b in BRANCHES}},
            "additionalProperties": False,
        },
        "fit_errors": {"type": "object", "additionalProperties": {"type": "string"}},
        "n": {"type": "integer", "minimum": 1},
        "mos": {
            "type": "object",
            "required": ["min", "max", "mean", "std", "scale", "scale_source"],
            "properties": {"min": _NUMBER, "max": _NUMBER, "mean": _NUMBER, "std": _NUMBER,
                           "scale": {"type": "array", "items": _NUMBER, "minItems": 2,
                                     "maxItems": 2},
                           "scale_source": {"enum": ["given", "inferred"]}},
            "additionalProperties": False,
        },
        "labels": {"type": ["string", "null"]},
        "weights": MODEL_WEIGHTS,
        "sampling": SAMPLING,
        "backend": {"type": ["string", "null"]},
        "tools": {"type": "object"},
    },
    "additionalProperties": False,
}


def check_document(data: Any, *, schema: Mapping, schema_id: str, version: int, kind: str,
                   source: str, error: type[Exception]) -> None:
    """Refuse ``data`` unless it is a ``schema_id`` document of ``version`` valid under ``schema``.

    One check for every versioned file the engine reads back (calibrations, reference
    distributions), so each says the same things the same way: not ours, another version,
    the first problem found.
    """
    if not isinstance(data, Mapping) or data.get("schema") != schema_id:
        raise error(f"{source}: not a cover-engine {kind} (no \"schema\": \"{schema_id}\")")
    if data.get("schema_version") != version:
        raise error(f"{source}: {kind} schema version {data.get('schema_version')!r}, this "
                    f"cover-engine reads version {version}")
    from cover_engine.runtime.engines.manifest.validator import validate

    problems = validate(dict(data), schema, kind)
    if problems:
        raise error(f"{source}: invalid {kind}: {problems[0]}")
