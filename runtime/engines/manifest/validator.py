"""A small JSON Schema (draft 2020-12 subset) validator: one clear message, no dependency.

The runtime must not need ``jsonschema`` to refuse a bad manifest; this covers the keywords
:data:`~.schema.MANIFEST_SCHEMA` uses, and the tests hold it to ``jsonschema`` on good and
mutated manifests.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

__all__ = ["validate"]


def validate(instance: Any, schema: Mapping, where: str = "") -> list[str]:
    """Problems of ``instance`` under ``schema`` (empty: valid); ``where`` names the position.

    Covers type, const, enum, required, properties, additionalProperties, items, min/maxItems,
    minimum, minLength, pattern and oneOf -- enough for one clear message, without jsonschema.
    """
    at = where or "manifest"
    if "oneOf" in schema:
        if sum(not validate(instance, s, where) for s in schema["oneOf"]) != 1:
            return [f"{at}: does not match exactly one allowed form"]
        return []
    if "const" in schema and instance != schema["const"]:
        return [f"{at}: must be {schema['const']!r}, got {instance!r}"]
    if "enum" in schema and instance not in schema["enum"]:
        return [f"{at}: must be one of {schema['enum']}, got {instance!r}"]
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
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            problems.append(f"{at}: {instance!r} does not match {schema['pattern']}")
    elif _is_type(instance, "number") and instance < schema.get("minimum", instance):
        problems.append(f"{at}: must be >= {schema['minimum']}, got {instance}")
    return problems


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str, "boolean": bool,
                              "null": type(None)}[name])
