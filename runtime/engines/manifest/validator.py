"""A small JSON Schema (draft 2020-12 subset) validator: one clear message, no dependency.

The runtime must not need ``jsonschema`` to refuse a bad manifest; this covers the keywords
:data:`~.schema.MANIFEST_SCHEMA` uses, and the tests hold it to ``jsonschema`` on good and
mutated manifests.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

__all__ = ["validate"]


def validate(instance: Any, schema: Mapping, where: str = "") -> list[str]:
    """Problems of ``instance`` under ``schema`` (empty: valid); ``where`` names the position.

    Covers type, const, enum, required, properties, additionalProperties, items, min/maxItems,
    minimum, maximum, min/maxLength, pattern and oneOf -- enough for one clear message, without
    jsonschema. Numbers must also be finite (JSON has no NaN; a document built in Python may).
    """
    at = where or "manifest"
    if "oneOf" in schema:
        results = [validate(instance, s, where) for s in schema["oneOf"]]
        if sum(not r for r in results) == 1:
            return []
        for alternative, problems in zip(schema["oneOf"], results):
            if problems and "type" in alternative and _is_type_of(instance, alternative["type"]):
                return problems  # the form it was meant to have says what is wrong
        return [f"{at}: {_show(instance)} matches none of the allowed forms"]
    if "const" in schema and instance != schema["const"]:
        return [f"{at}: must be {schema['const']!r}, got {_show(instance)}"]
    if "enum" in schema and instance not in schema["enum"]:
        return [f"{at}: must be one of {schema['enum']}, got {_show(instance)}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(instance, t) for t in types):
            return [f"{at}: must be {' or '.join(types)}, got {type(instance).__name__}"]
    problems: list[str] = []
    if isinstance(instance, dict):
        for key in schema.get("required", ()):
            if key not in instance:
                problems.append(f"{at}: missing {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            sub = f"{where}.{key}" if where else key
            if key in props:
                problems += validate(value, props[key], sub)
            elif extra is False:
                problems.append(f"{at}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                problems += validate(value, extra, sub)
    elif isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            problems.append(f"{at}: needs at least {schema['minItems']} items")
        if len(instance) > schema.get("maxItems", len(instance)):
            problems.append(f"{at}: takes at most {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                problems += validate(item, schema["items"], f"{where}[{i}]")
    elif isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            problems.append(f"{at}: must not be empty")
        if len(instance) > schema.get("maxLength", len(instance)):
            problems.append(f"{at}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            problems.append(f"{at}: {instance[:80]!r} does not match {schema['pattern']}")
    elif _is_type(instance, "number"):
        if isinstance(instance, float) and not math.isfinite(instance):
            problems.append(f"{at}: must be a finite number, got {instance}")
        elif instance < schema.get("minimum", instance):
            problems.append(f"{at}: must be >= {schema['minimum']}, got {_short(instance)}")
        elif instance > schema.get("maximum", instance):
            problems.append(f"{at}: must be <= {schema['maximum']}, got {_short(instance)}")
    return problems


def _show(value: Any) -> str:
    """A value for a message, cut short (it may be anything a hostile file holds)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _short(number: Any) -> str:
    """A number for a message: huge integers are not printed digit by digit."""
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def _is_type_of(value: Any, types: Any) -> bool:
    return any(_is_type(value, t) for t in (types if isinstance(types, list) else [types]))


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str, "boolean": bool,
                              "null": type(None)}[name])
