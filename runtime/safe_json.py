"""Strict JSON for files a user hands us (``manifest.json``, model configs).

Python's ``json`` module accepts things a hostile or corrupted file can use against its reader:
``NaN`` and ``Infinity`` literals (a NaN ``std`` normalises every view to NaN), numbers that
overflow to ``inf`` (``1e999``) or take seconds to convert (a 100,000-digit integer), duplicate
keys (the last one silently wins, so what a reviewer reads is not what runs), and nesting deep
enough to raise ``RecursionError`` in the parser or in any recursive check after it. Here each of
those is a :class:`JSONRefused` with one line saying what and where; the caller adds the path.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Union

from cover_engine.runtime.constants import JSON_MAX_BYTES, JSON_MAX_DEPTH, JSON_MAX_INT_DIGITS
from cover_engine.runtime.errors import JSONRefused

__all__ = ["JSONRefused", "loads_strict", "nesting_depth"]

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON ``text``, brackets inside strings ignored (no parsing,
    so it cannot recurse)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise JSONRefused(f"{name} is not a JSON number (only finite numbers are accepted)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(f"number {text[:40]} is out of range (overflows to infinity)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > JSON_MAX_INT_DIGITS:
        raise JSONRefused(f"integer {text[:20]}... has {len(text.lstrip('-'))} digits "
                          f"(at most {JSON_MAX_INT_DIGITS})")
    return int(text)


def _unique_keys(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise JSONRefused(f"duplicate key {key[:80]!r} in one object (which one counts would "
                              "be a guess)")
        out[key] = value
    return out


def loads_strict(data: Union[str, bytes], *, max_depth: int = JSON_MAX_DEPTH,
                 max_bytes: int = JSON_MAX_BYTES) -> Any:
    """Parse JSON refusing NaN/Infinity, out-of-range numbers, duplicate keys, nesting deeper
    than ``max_depth`` and texts over ``max_bytes``; :class:`JSONRefused` says which."""
    if len(data) > max_bytes:
        raise JSONRefused(f"{len(data)} bytes, more than the {max_bytes} a file of this kind may "
                          "hold")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONRefused(f"not UTF-8 text (byte {exc.start})") from None
    depth = nesting_depth(data)
    if depth > max_depth:
        raise JSONRefused(f"nested {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float,
                          parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except JSONRefused:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise JSONRefused(f"not valid JSON ({' '.join(str(exc).split())[:200]})") from None
