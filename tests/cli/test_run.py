"""cover-run end to end: input expansion, output formats, failures in a batch, CSV safety."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import SAMPLE

from cover_engine.bench.clips import write_clip
from cover_engine.runtime.cli.run import expand_inputs, format_table, main
from cover_engine.runtime.results import FileScore
from cover_engine.runtime.scoring import Scorer



def test_expand_inputs_files_folders_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    for name in ("a/x.mp4", "a/deep/y.MKV", "a/z.png", "a/notes.txt", "b.mp4"):
        (tmp_path / name).write_bytes(b"0")
    files, missing = expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.mp4"),
                                    str(tmp_path / "b.mp4"), str(tmp_path / "nothing*.mov"),
                                    str(tmp_path / "absent.mp4")])
    names = [f.name for f in files]
    assert names == ["y.MKV", "x.mp4", "z.png", "b.mp4", "absent.mp4"]  # b.mp4 once, txt skipped
    assert [m[0] for m in missing] == [str(tmp_path / "nothing*.mov")]


def test_format_table_aligns_columns():
    rows = [FileScore(path="a.mp4", semantic=0.1, technical=-0.2, aesthetic=0.3, overall=0.2,
                      frames=30, resolution="640x360", backend="torch", seconds=1.5)]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:5] == ["file", "semantic", "technical", "aesthetic", "overall"]
    assert "-0.2000" in lines[2] and "640x360" in lines[2]
    assert len({len(line) for line in lines}) == 1


@pytest.fixture(scope="module")
def small_args(vectors_dir):
    """Torch backend, the reference vectors' small config, seeded random weights."""
    return ["--backend", "torch", "--random-weights", "--config",
            str(vectors_dir / "model" / "config.json"), "-q"]


def test_run_batch_json_csv_and_failures(tmp_path, small_args):
    video = tmp_path / "clip.mp4"
    shutil.copy(SAMPLE, video)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    out_csv = tmp_path / "scores.csv"
    runner = CliRunner()
    result = runner.invoke(main, [str(video), str(empty), str(text), str(tmp_path / "gone.mp4"),
                                  "--json", "--csv", str(out_csv)] + small_args)
    assert result.exit_code == 1, result.output
    objs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(objs) == 1 and objs[0]["path"] == str(video)
    assert np.isclose(objs[0]["overall"],
                      objs[0]["semantic"] + objs[0]["technical"] + objs[0]["aesthetic"])
    assert objs[0]["frames"] == 64 and objs[0]["resolution"] == "480x270"
    for name in ("empty.mp4", "notes.mp4", "gone.mp4"):
        assert name in result.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == [str(video)]
    assert float(rows[0]["overall"]) == pytest.approx(objs[0]["overall"], abs=1e-6)
    assert objs[0]["colour"] == rows[0]["colour"] == "decord"  # the default, recorded


def test_colour_option_changes_the_frames_and_is_recorded(tmp_path, small_args):
    video = tmp_path / "clip.mp4"
    write_clip(video, 320, 240, 40, seed=5)
    out_csv = tmp_path / "scores.csv"
    runner = CliRunner()
    got = {}
    for colour in ("decord", "exact"):
        res = runner.invoke(main, [str(video), "--json", "--colour", colour, "--csv",
                                   str(out_csv)] + small_args)
        assert res.exit_code == 0, res.output
        got[colour] = json.loads(res.stdout.splitlines()[-1])
        assert got[colour]["colour"] == colour
    assert got["decord"]["overall"] != got["exact"]["overall"]  # other RGB, other scores
    assert [r["colour"] for r in csv.DictReader(out_csv.open())] == ["decord", "exact"]
    bad = runner.invoke(main, [str(video), "--colour", "srgb"] + small_args)
    assert bad.exit_code == 2 and "srgb" in bad.output


def test_run_is_repeatable_and_seed_changes_sampling(tmp_path, small_args):
    video = tmp_path / "clip.mp4"
    write_clip(video, 320, 240, 90, seed=3)
    runner = CliRunner()

    def overall(*extra):
        res = runner.invoke(main, [str(video), "--json"] + small_args + list(extra))
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout.splitlines()[-1])["overall"]

    first = overall()
    assert overall() == first                      # deterministic default
    assert overall("--seed", "1") == overall("--seed", "1")
    assert overall("--seed", "1") != first         # random offsets actually move
    assert np.isfinite(overall("--clips", "3"))


def test_table_output_and_image(tmp_path, small_args):
    import av

    image = tmp_path / "still.png"
    frame = av.VideoFrame.from_ndarray(
        np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8), format="rgb24")
    frame.to_image().save(image) if hasattr(frame, "to_image") else None
    if not image.exists():
        pytest.skip("PIL not available to write a PNG")
    res = CliRunner().invoke(main, [str(image)] + small_args)
    assert res.exit_code == 0, res.output
    assert "still.png" in res.stdout and "400x300" in res.stdout


def test_a_batch_goes_through_score_many_in_order(tmp_path, monkeypatch):
    """cover-run hands the whole list to the scorer's score_many (the GPU path overlaps the
    decoding of one file with the inference of the one before); results and failures are
    reported in file order."""
    from cover_engine.runtime import scoring

    files = [tmp_path / f"v{k}.mp4" for k in range(3)]
    for f in files:
        f.write_bytes(b"0")

    class Scorer:
        batches = []

        def score_many(self, paths):
            paths = list(paths)
            Scorer.batches.append(paths)
            for k, path in enumerate(paths):
                if k == 1:
                    yield path, ValueError("cannot read")
                else:
                    yield path, FileScore(path=str(path), semantic=k, technical=0.0,
                                          aesthetic=0.0, overall=k, frames=1,
                                          resolution="2x2", backend="fake", seconds=0.0)

        def close(self):
            pass

    monkeypatch.setattr(scoring, "make_scorer", lambda *a, **k: Scorer())
    result = CliRunner().invoke(main, [str(tmp_path), "--json", "-q"])
    assert result.exit_code == 1
    assert Scorer.batches == [files]
    scored = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert scored == [str(files[0]), str(files[2])]
    assert "v1.mp4: ValueError: cannot read" in result.stderr


# ----------------------------------------------------------------------------- non-finite scores

class _MapsScorer:
    """Scores through the real ``file_score`` from canned maps: NaN/Inf for files named so."""

    name = "fake"
    score_many = Scorer.score_many  # the real batch loop over score()

    def score(self, path):
        from types import SimpleNamespace

        from cover_engine.runtime.results import file_score

        value = {"nan": np.nan, "inf": np.inf}.get(Path(path).stem, 0.25)
        maps = {b: np.full((1, 1, 2, 7, 7), 0.25, np.float32)
                for b in ("semantic", "technical", "aesthetic")}
        maps["technical"][0, 0, 0, 0, 0] = value
        return file_score(path, maps, SimpleNamespace(num_frames=2, width=8, height=8), "fake", 0.0)


def test_non_finite_score_fails_that_file_only(tmp_path, monkeypatch):
    import cover_engine.runtime.scoring as scoring

    monkeypatch.setattr(scoring, "make_scorer", lambda *a, **k: _MapsScorer())
    files = [tmp_path / f"{n}.mp4" for n in ("good", "nan", "inf")]
    for f in files:
        f.write_bytes(b"x")
    out_csv = tmp_path / "s.csv"
    res = CliRunner().invoke(main, [*map(str, files), "--json", "--csv", str(out_csv), "-q"])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    objs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [Path(o["path"]).name for o in objs] == ["good.mp4"]
    assert "nan" not in res.stdout.lower().replace(str(tmp_path).lower(), "")
    for name, what in (("nan.mp4", "technical = nan"), ("inf.mp4", "technical = inf")):
        lines = [line for line in res.stderr.splitlines() if name in line]
        assert lines and all("non-finite score" in line and what in line for line in lines), lines
    assert [r["name"] for r in csv.DictReader(out_csv.open())] == [str(files[0])]


def test_torch_mode_is_for_the_torch_backend(tmp_path):
    result = CliRunner().invoke(main, [str(SAMPLE), "--backend", "onnxruntime", "--engines",
                                       str(tmp_path), "--torch-mode", "compile"])
    assert result.exit_code != 0
    assert "--torch-mode compile applies to --backend torch" in result.output
