"""Strict JSON reading: every hostile construct is refused with one line, never a RecursionError."""
from __future__ import annotations

import pytest

from cover_engine.runtime.constants import JSON_MAX_DEPTH
from cover_engine.runtime.safe_json import JSONRefused, loads_strict, nesting_depth


def test_plain_json_reads_as_json():
    text = '{"a": [1, 2.5, -3e-2, "x[{", {"b": null, "c": true}], "d": "\\"]}"}'
    assert loads_strict(text) == {"a": [1, 2.5, -0.03, "x[{", {"b": None, "c": True}], "d": '"]}'}
    assert loads_strict(text.encode()) == loads_strict(text)


def test_nesting_depth_ignores_brackets_in_strings():
    assert nesting_depth('{"a": [[1], {"b": "[[[[{{{{"}]}') == 3
    assert nesting_depth('"\\\\"') == 0 and nesting_depth("7") == 0


@pytest.mark.parametrize("text,needle", [
    ('{"std": [NaN, 1, 1]}', "NaN is not a JSON number"),
    ('{"std": [Infinity, 1, 1]}', "Infinity is not a JSON number"),
    ('{"mean": -Infinity}', "-Infinity is not a JSON number"),
    ('{"mean": 1e999}', "number 1e999 is out of range"),
    ('{"mean": -1.5e400}', "number -1.5e400 is out of range"),
    ('{"bytes": ' + "9" * 100_000 + "}", "has 100000 digits"),
    ('{"graphs": [], "name": "a", "graphs": [1]}', "duplicate key 'graphs'"),
    ('{"a": {"k": 1, "k": 1}}', "duplicate key 'k'"),
    ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep, more than the 32 allowed"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "nested 5000 levels deep"),
    ("{not json", "not valid JSON (Expecting property name"),
    (b"\xff\xfe{}", "not UTF-8 text"),
])
def test_hostile_json_is_refused_in_one_line(text, needle):
    with pytest.raises(JSONRefused) as info:
        loads_strict(text)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_depth_and_size_limits_are_exact():
    ok = "[" * JSON_MAX_DEPTH + "]" * JSON_MAX_DEPTH
    assert nesting_depth(ok) == JSON_MAX_DEPTH and loads_strict(ok)
    with pytest.raises(JSONRefused, match="nested 33 levels"):
        loads_strict("[" + ok + "]")
    with pytest.raises(JSONRefused, match="more than the 10 a file of this kind may hold"):
        loads_strict('{"a": "0123456789"}', max_bytes=10)
