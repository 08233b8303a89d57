"""Hostile manifest.json: out-of-range values, contradicting fields, and JSON built to hurt the
reader. Every case is generated here from the toy engine folder; every refusal is one line that
names the manifest and the field or the cause."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cover_engine.runtime.cli.run import main as run_main
from cover_engine.runtime.engines.manifest import MANIFEST_FILE, load_manifest
from cover_engine.runtime.errors import EngineError

from helpers.toy_engines import make_engine_folder


@pytest.fixture()
def folder(tmp_path) -> Path:
    make_engine_folder(tmp_path / "eng")
    return tmp_path / "eng"


def _refusal(folder: Path) -> str:
    with pytest.raises(EngineError) as info:
        load_manifest(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / MANIFEST_FILE}: ") and "\n" not in message
    return message


def _graph(d: dict, mode: str, branch: str) -> dict:
    return next(g for g in d["graphs"] if (g["mode"], g["branch"]) == (mode, branch))


def _set(path: str, value):
    """An edit setting the value at a dotted path (``views.technical.std.1``)."""
    def edit(d):
        *parents, last = path.split(".")
        for key in parents:
            d = d[int(key)] if isinstance(d, list) else d[key]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return edit


# ----------------------------------------------------------------------------- ranges

@pytest.mark.parametrize("edit,needle", [
    (_set("views.technical.clip_len", 0), "views.technical.clip_len: must be >= 1, got 0"),
    (_set("views.technical.clip_len", 10 ** 9), "views.technical.clip_len: must be <= 1024"),
    (_set("views.semantic.t_frag", 0), "views.semantic.t_frag: must be >= 1, got 0"),
    (_set("views.semantic.t_frag", -4), "views.semantic.t_frag: must be >= 1, got -4"),
    (_set("views.aesthetic.frame_interval", 0), "views.aesthetic.frame_interval: must be >= 1"),
    (_set("views.aesthetic.size_h", 100_000), "views.aesthetic.size_h: must be <= 8192"),
    (_set("views.technical.fragments_w", -1), "views.technical.fragments_w: must be >= 0"),
    (_set("views.technical.clip_len", 2.5), "views.technical.clip_len: must be integer, got float"),
    (_set("views.technical.clip_len", "40"), "views.technical.clip_len: must be integer, got str"),
    (_set("views.technical.clip_len", True), "views.technical.clip_len: must be integer, got bool"),
    (_set("views.technical.std.1", 0), "views.technical.std[1]: must be >= 0.01, got 0"),
    (_set("views.technical.std.0", -57.1), "views.technical.std[0]: must be >= 0.01, got -57.1"),
    (_set("views.technical.std.2", 1e-300), "views.technical.std[2]: must be >= 0.01, got 1e-300"),
    (_set("views.semantic.std", [1, 2]), "views.semantic.std: needs at least 3 items"),
    (_set("views.semantic.mean.0", 1e300), "views.semantic.mean[0]: must be <= 10000.0"),
    (_set("views.semantic.mean.0", "123"), "views.semantic.mean[0]: must be number, got str"),
    (_set("views.semantic.evil", 1), "views.semantic: unexpected key 'evil'"),
    (_set("views.fourth", {}), "views: unexpected key 'fourth'"),
    (_set("batch.max", 0), "batch.max: must be >= 1, got 0"),
    (_set("batch.max", 10 ** 6), "batch.max: must be <= 4096, got 1000000"),
    (_set("opset", 5), "opset: must be >= 17, got 5"),
    (_set("opset", 1000), "opset: must be <= 64, got 1000"),
    (_set("graphs.0.file.bytes", -1), "graphs[0].file.bytes: must be >= 1, got -1"),
    (_set("graphs.0.file.bytes", 0), "graphs[0].file.bytes: must be >= 1, got 0"),
    (_set("graphs.0.file.bytes", 2 ** 62), "graphs[0].file.bytes: must be <= 1099511627776"),
    (_set("graphs.0.inputs.0.shape.1", 0), "graphs[0].inputs[0].shape[1]: must be >= 1, got 0"),
    (_set("graphs.0.inputs.0.shape.2", 2 ** 40), "graphs[0].inputs[0].shape[2]: must be <= 1048576"),
    (_set("graphs.0.inputs.0.shape.0", "lots"), "graphs[0].inputs[0].shape[0]: 'lots' matches none"),
    (_set("graphs.0.inputs", []), "graphs[0].inputs: needs at least 1 items"),
    (_set("name", ""), "name: must not be empty"),
    (_set("name", "x" * 10_000), "name: longer than 4096 characters"),
    (_set("graphs", []), "graphs: needs at least 3 items"),
])
def test_out_of_range_values_are_refused(folder, edit, needle):
    _edit(folder, edit)
    assert needle in _refusal(folder)


def test_seven_graphs_are_too_many(folder):
    _edit(folder, lambda d: d["graphs"].append(d["graphs"][0]))
    assert "graphs: takes at most 6 items" in _refusal(folder)


# ----------------------------------------------------------------------------- consistency

@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["batch"].update(min=4, opt=2, max=8), "batch: needs min <= opt <= max, got 4, 2, 8"),
    (_set("views.semantic.t_frag", 3), "views.semantic: clip_len 2 does not split into t_frag 3"),
    (lambda d: d["views"]["semantic"].update(clip_len=3, t_frag=2),
     "views.semantic: clip_len 3 does not split into t_frag 2"),
    (_set("views.technical.fragments_h", 0), "views.technical: a fragments view needs"),
    (_set("views.technical.aligned", 0), "views.technical: aligned 0 does not divide clip_len 2"),
    (_set("views.aesthetic.size_w", 0), "views.aesthetic: a resize view needs size_h and size_w"),
    (_set("views.aesthetic.name", "technical"),
     "views.aesthetic.name: is 'technical', listed under 'aesthetic'"),
    (_set("views.aesthetic.size_h", 16), "is not the view views.aesthetic makes"),
    (_set("normalisation.semantic.std.0", 1.0),
     "normalisation.semantic: mean/std differ from views.semantic"),
    (lambda d: _graph(d, "video", "technical")["inputs"][0]["shape"].__setitem__(0, 1),
     "shape [1, 3, 2, 32, 32] must have 'batch' as its first axis"),
    (lambda d: _graph(d, "video", "semantic")["outputs"][0]["shape"].__setitem__(2, "batch"),
     "must have 'batch' as its first axis and only there"),
])
def test_contradicting_fields_are_refused(folder, edit, needle):
    _edit(folder, edit)
    assert needle in _refusal(folder)


# ----------------------------------------------------------------------------- hostile JSON

def _text(folder: Path) -> str:
    return (folder / MANIFEST_FILE).read_text()


@pytest.mark.parametrize("hurt,needle", [
    (lambda t: t.replace('"std": [', '"std": [NaN, ', 1).replace(", 57.12, 57.375]", "]", 1),
     "NaN is not a JSON number"),
    (lambda t: t.replace('"opset": 18', '"opset": Infinity'), "Infinity is not a JSON number"),
    (lambda t: t.replace('"opset": 18', '"opset": 1e999'), "number 1e999 is out of range"),
    (lambda t: t.replace('"opset": 18', '"opset": ' + "7" * 5000), "has 5000 digits"),
    (lambda t: t.replace('"opset": 18', '"opset": 18, "opset": 99'), "duplicate key 'opset'"),
    (lambda t: t.replace('"model": {', '"model": {"deep": ' + "[" * 50_000 + "]" * 50_000 + ", ", 1),
     "nested 50002 levels deep, more than the 32 allowed"),
    (lambda t: t.replace('"model": {', '"model": {"deep": ' + '{"a": ' * 40 + "1" + "}" * 40 + ", ", 1),
     "nested 42 levels deep"),
    (lambda t: t[: len(t) // 2], "not valid JSON"),
])
def test_hostile_json_is_refused(folder, hurt, needle):
    path = folder / MANIFEST_FILE
    path.write_text(hurt(_text(folder)))
    assert needle in _refusal(folder)


def test_huge_and_binary_manifests_are_refused(folder):
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["model"]["padding"] = "x" * (17 << 20)
    path.write_text(json.dumps(data))
    assert "bytes, more than the 16777216 a manifest may hold" in _refusal(folder)
    path.write_bytes(b'{"schema": "\xff\xfe"}')
    assert "not UTF-8 text" in _refusal(folder)


def test_manifest_that_is_not_a_regular_file(folder):
    path = folder / MANIFEST_FILE
    path.unlink()
    os.mkfifo(path)  # reading it would block forever
    assert _refusal(folder).endswith("manifest.json: not a regular file")
    path.unlink()
    path.mkdir()
    assert _refusal(folder).endswith("manifest.json: not a regular file")


# ----------------------------------------------------------------------------- the command

def test_cover_run_reports_a_deeply_nested_manifest_in_one_line(folder, tmp_path):
    path = folder / MANIFEST_FILE
    path.write_text(_text(folder).replace('"model": {', '"model": {"deep": ' + "[" * 200_000
                                          + "]" * 200_000 + ", ", 1))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"never read")
    result = CliRunner().invoke(run_main, [str(clip), "--backend", "onnxruntime", "--engines",
                                           str(folder), "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: {path}: nested 200002 levels deep, more than the 32 allowed"]


def _edit(folder: Path, edit) -> None:
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
