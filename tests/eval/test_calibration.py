"""Calibrated MOS and reference percentiles: fit, file format, refusals, identity.

The labelled set is made here: small generated videos scored by the reference vectors' small
model (its weight files, so the weights have a sha256), with MOS made from a hidden monotone
curve of those raw scores plus noise, the way human MOS relate to a good model's scores. A
calibration fitted on part of the set must predict the held-out part on the MOS scale.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from cover_engine.runtime.constants import OFFICIAL_VIEWS
from cover_engine.runtime.errors import CoverError
from cover_engine.runtime.eval.calibration import (CALIBRATION_SCHEMA, Calibration,
                                                   CalibrationError, fit_calibration,
                                                   infer_scale, load_calibration)
from cover_engine.runtime.eval.reference import (REFERENCE_SCHEMA, build_reference,
                                                 load_reference, percentile_of)
from cover_engine.runtime.model_identity import (ModelIdentity, identity_from_options,
                                           identity_of_backend)

from helpers import SAMPLE
from helpers.media import write_video

TARGETS = ("overall", "semantic", "technical", "aesthetic")
N_VIDEOS, N_FIT = 18, 12


def vector_model(vectors_dir) -> dict:
    model = vectors_dir / "model"
    return dict(config=model / "config.json", weights=model / "cover.pth",
                clip_weights=model / "clip.pt")


def hidden_mos(raw: np.ndarray, rng) -> np.ndarray:
    """MOS on a 1-5 scale: a normal-CDF curve (not the fitted logistic) of the raw scores,
    centred on their median, plus rating noise, within the scale."""
    centre, spread = np.median(raw), np.std(raw)
    mos = 1 + 4 * special.ndtr((raw - centre) / spread) + rng.normal(0, 0.05, raw.shape)
    return np.clip(mos, 1, 5)


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory, vectors_dir):
    """``N_VIDEOS`` generated videos, their raw scores (small model) and MOS."""
    from cover_engine.runtime.scoring import make_scorer

    root = tmp_path_factory.mktemp("set")
    rng = np.random.default_rng(0)
    scorer = make_scorer("torch", **vector_model(vectors_dir))
    y, x = np.mgrid[0:48, 0:64]
    names, scores = [], []
    for i in range(N_VIDEOS):
        noise, level = rng.uniform(0, 60), rng.uniform(40, 200)
        frames = [np.clip(np.stack([(x * 4 + 3 * k) % 256, (y * 5) % 256, np.full_like(x, level)],
                                   -1) + rng.normal(0, noise, (48, 64, 3)), 0, 255).astype(np.uint8)
                  for k in range(12)]
        name = f"v{i:02d}.mp4"
        write_video(root / name, frames, rate=12)
        names.append(name)
        scores.append(scorer.score(root / name))
    raw = np.array([s.overall for s in scores])
    mos = hidden_mos(raw, rng)
    return {"root": root, "names": names, "scores": scores, "mos": mos, "scorer": scorer}


def preds(scores) -> dict:
    return {t: np.array([getattr(s, t) for s in scores]) for t in TARGETS}


def fake_identity(sha="a" * 64) -> ModelIdentity:
    return ModelIdentity.of({"cover": {"file": "COVER.pth", "sha256": sha},
                             "clip": {"file": "ViT-L-14.pt", "sha256": "b" * 64}}, OFFICIAL_VIEWS)


def synthetic(n=30, seed=1):
    rng = np.random.default_rng(seed)
    raw = rng.normal(0, 1.0, n)
    mos = 1 + 4 * special.expit(raw / 0.7) + rng.normal(0, 0.05, n)
    pred = {"overall": raw, "semantic": raw * 0.3, "technical": raw * 0.5 + 0.1,
            "aesthetic": raw * 0.2 - 1}
    return pred, mos


# --------------------------------------------------------------------------- round trip


def test_round_trip_predicts_held_out_mos(labelled_set, tmp_path):
    scores, mos = labelled_set["scores"], labelled_set["mos"]
    identity = identity_of_backend(labelled_set["scorer"].backend)
    cal = fit_calibration(preds(scores[:N_FIT]), mos[:N_FIT], name="made-here",
                          identity=identity, sampling={"seed": None, "clips": 1})
    loaded = load_calibration(cal.save(tmp_path / "cal.json"))
    assert loaded.to_dict() == cal.to_dict()

    held_raw = preds(scores[N_FIT:])["overall"]
    held_mos = mos[N_FIT:]
    predicted = loaded.predict(held_raw)
    np.testing.assert_array_equal(predicted, cal.predict(held_raw))
    rmse = float(np.sqrt(np.mean((predicted - held_mos) ** 2)))
    raw_rmse = float(np.sqrt(np.mean((held_raw - held_mos) ** 2)))
    mean_rmse = float(np.sqrt(np.mean((mos[:N_FIT].mean() - held_mos) ** 2)))
    assert rmse < 0.1 * raw_rmse, (rmse, raw_rmse)
    assert rmse < 0.5 * mean_rmse, (rmse, mean_rmse)  # far better than guessing the mean MOS
    assert cal.n == N_FIT and cal.mos.scale_low == 1 and cal.mos.scale_high == 5
    assert cal.mos.scale_source == "inferred"
    assert cal.fits["overall"].rmse < 0.3 and cal.fits["overall"].plcc > 0.9


def test_the_file_says_everything_a_host_needs(labelled_set, tmp_path, vectors_dir):
    jsonschema = pytest.importorskip("jsonschema")
    scores, mos = labelled_set["scores"], labelled_set["mos"]
    identity = identity_of_backend(labelled_set["scorer"].backend)
    cal = fit_calibration(preds(scores), mos, name="all", identity=identity,
                          sampling={"seed": None, "clips": 1}, scale=(1, 5), labels="labels.txt")
    data = json.loads(cal.save(tmp_path / "cal.json").read_text())
    jsonschema.validate(data, CALIBRATION_SCHEMA)
    assert data["schema"] == "cover-engine-calibration" and data["schema_version"] == 1
    assert data["n"] == N_VIDEOS and data["mos"]["scale"] == [1.0, 5.0]
    assert data["mos"]["scale_source"] == "given"
    from cover_engine.runtime.hashing import sha256_file

    base = data["weights"]["base"]
    assert base["cover"]["sha256"] == sha256_file(vector_model(vectors_dir)["weights"])
    assert base["clip"]["sha256"] == sha256_file(vector_model(vectors_dir)["clip_weights"])
    assert data["weights"]["head"] is None
    assert set(data["sampling"]) == {"seed", "clips", "views"}
    assert data["sampling"]["views"]["semantic"]["clip_len"] == 4
    # the formula in the file, evaluated by hand, gives the same numbers
    x = preds(scores)["overall"]
    f = data["fits"]["overall"]
    by_hand = f["b2"] + (f["b1"] - f["b2"]) / (1 + np.exp(-(x - f["b3"]) / abs(f["b4"])))
    np.testing.assert_allclose(by_hand, cal.predict(x), rtol=0, atol=1e-12)
    for branch in ("semantic", "technical", "aesthetic"):
        assert data["fits"][branch] is not None or branch in data["fit_errors"]


# --------------------------------------------------------------------------- refusals


def test_too_small_sets_are_refused():
    pred, mos = synthetic(9)
    with pytest.raises(CalibrationError, match="9 scored videos are too few.*at least 10"):
        fit_calibration(pred, mos, name="x", identity=fake_identity(), sampling={})


def test_constant_mos_and_failed_fits_are_refused():
    pred, mos = synthetic(20)
    with pytest.raises(CalibrationError, match="every MOS is 3.0"):
        fit_calibration(pred, np.full(20, 3.0), name="x", identity=fake_identity(), sampling={})
    flat = {t: np.full(20, 0.25) for t in TARGETS}
    with pytest.raises(CalibrationError,
                       match="overall score failed: every prediction is the same"):
        fit_calibration(flat, mos, name="x", identity=fake_identity(), sampling={})
    nan = dict(pred, overall=np.where(np.arange(20) == 3, np.nan, pred["overall"]))
    with pytest.raises(CalibrationError, match="overall score failed: 1 scores are not finite"):
        fit_calibration(nan, mos, name="x", identity=fake_identity(), sampling={})


def test_a_branch_that_cannot_be_fitted_is_recorded_not_fatal(tmp_path):
    pred, mos = synthetic(25)
    pred["technical"] = np.full(25, 1.5)
    cal = fit_calibration(pred, mos, name="x", identity=fake_identity(),
                          sampling={"seed": None, "clips": 1})
    assert "technical" not in cal.fits and "same value" in cal.fit_errors["technical"]
    with pytest.raises(CalibrationError, match="no technical fit"):
        cal.predict([0.0], "technical")
    again = load_calibration(cal.save(tmp_path / "c.json"))
    assert again.fit_errors == cal.fit_errors and again.to_dict()["fits"]["technical"] is None


def test_scores_of_other_weights_or_head_or_views_are_refused():
    pred, mos = synthetic(20)
    cal = fit_calibration(pred, mos, name="kv1k", identity=fake_identity(),
                          sampling={"seed": None, "clips": 1})
    cal.check(fake_identity())  # same model: fine
    renamed = ModelIdentity.of({"cover": {"file": "elsewhere.pth", "sha256": "a" * 64},
                                "clip": {"file": "x.pt", "sha256": "b" * 64}}, OFFICIAL_VIEWS)
    cal.check(renamed)  # file names do not matter, checksums do
    with pytest.raises(CalibrationError, match="kv1k.*other base weights.*fit one for this model"
                                               "|kv1k.*other base weights.*Fit one"):
        cal.check(fake_identity("c" * 64))
    with pytest.raises(CalibrationError, match="random seed 0"):
        cal.check(ModelIdentity.of({"random_seed": 0}, OFFICIAL_VIEWS))
    headed = ModelIdentity.of(fake_identity().base, OFFICIAL_VIEWS,
                              head={"file": "head.pt", "sha256": "d" * 64})
    with pytest.raises(CalibrationError, match="another head"):
        cal.check(headed)
    from dataclasses import replace

    views = dict(OFFICIAL_VIEWS, semantic=replace(OFFICIAL_VIEWS["semantic"], size_h=256))
    with pytest.raises(CalibrationError, match="sample settings for the semantic view"):
        cal.check(ModelIdentity.of(fake_identity().base, views))
    assert cal.sampling_notes(seed=None, clips=1) == []
    assert len(cal.sampling_notes(seed=3, clips=2)) == 2


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.update(schema="something-else"), "not a cover-engine calibration"),
    (lambda d: d.update(schema_version=2), "schema version 2"),
    (lambda d: d.pop("n"), "missing 'n'"),
    (lambda d: d["fits"].update(overall=None), "calibration.fits.overall: must be object"),
    (lambda d: d["fits"]["overall"].update(b4=0.0), "parameters are not usable"),
    (lambda d: d["fits"]["overall"].update(b1="big"), "must be number"),
    (lambda d: d["weights"].pop("head"), "missing 'head'"),
    (lambda d: d.update(extra=1), "unexpected key 'extra'"),
])
def test_bad_calibration_files_name_the_file_and_the_cause(tmp_path, edit, needle):
    pred, mos = synthetic(20)
    data = fit_calibration(pred, mos, name="x", identity=fake_identity(),
                           sampling={"seed": None, "clips": 1}).to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError) as info:
        load_calibration(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_unreadable_calibration_files(tmp_path):
    with pytest.raises(CoverError, match="no such calibration file"):
        load_calibration(tmp_path / "absent.json")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(CoverError, match="t.json: not a readable calibration file"):
        load_calibration(tmp_path / "t.json")


def test_saving_is_atomic(tmp_path, monkeypatch):
    pred, mos = synthetic(20)
    cal = fit_calibration(pred, mos, name="x", identity=fake_identity(),
                          sampling={"seed": None, "clips": 1})
    target = tmp_path / "cal.json"
    target.write_text("previous")
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):
        cal.save(target)
    assert target.read_text() == "previous"


def test_scale_inference():
    assert infer_scale(np.array([1.2, 4.6])) == (1.0, 5.0)
    assert infer_scale(np.array([2.0, 95.0])) == (0.0, 100.0)
    assert infer_scale(np.array([0.1, 0.9])) == (0.0, 1.0)
    assert infer_scale(np.array([-3.0, 140.0])) == (-3.0, 140.0)


def test_tightly_clustered_scores_still_fit():
    """Scores spread over 0.02 (random weights, a branch): upstream's start b4 = 0.5 sees a
    straight line; the second start at the scores' spread finds the curve."""
    rng = np.random.default_rng(5)
    raw = rng.normal(-1.45, 0.02, 40)
    mos = 1 + 4 * special.expit((raw + 1.45) / 0.01) + rng.normal(0, 0.03, 40)
    cal = fit_calibration({t: raw for t in TARGETS}, mos, name="x", identity=fake_identity(),
                          sampling={})
    assert cal.fits["overall"].rmse < 0.1


# --------------------------------------------------------------------------- identity


def test_identity_of_a_backend_matches_the_options(labelled_set, vectors_dir):
    built = identity_of_backend(labelled_set["scorer"].backend)
    planned = identity_from_options(backend="torch", **vector_model(vectors_dir))
    assert built == planned
    assert built.mismatch(planned) is None
    random = identity_from_options(backend="torch", random_weights=True,
                                   config=vector_model(vectors_dir)["config"])
    assert "other base weights" in built.mismatch(random)


def test_identity_from_an_engine_folder_is_its_manifest(tmp_path):
    from helpers.toy_engines import INPUTS, make_engine_folder

    from cover_engine.runtime.constants import views_for_inputs
    from cover_engine.runtime.engines.manifest import MANIFEST_FILE
    from cover_engine.runtime.engines.ort_runner import OrtBackend

    folder = tmp_path / "eng"
    make_engine_folder(folder)
    planned = identity_from_options(backend="auto", engines=folder)
    assert planned.base == {"random_seed": 0}
    assert planned == identity_of_backend(OrtBackend(folder))
    assert planned == ModelIdentity.of({"random_seed": 0}, views_for_inputs(INPUTS))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["weights"] = fake_identity().base
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert identity_from_options(engines=folder).base == fake_identity().base


# --------------------------------------------------------------------------- percentiles


def test_percentile_is_the_mid_rank():
    ref = np.array([1.0, 2.0, 2.0, 3.0])
    assert percentile_of(ref, 0.5) == 0 and percentile_of(ref, 9) == 100
    assert percentile_of(ref, 2.0) == pytest.approx(50.0)
    assert percentile_of(ref, 1.0) == pytest.approx(12.5)
    assert percentile_of(ref, 2.5) == pytest.approx(75.0)


def test_reference_round_trip_and_refusals(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    pred, _ = synthetic(40)
    ref = build_reference(pred, name="mine", identity=fake_identity(),
                          sampling={"seed": None, "clips": 1}, source="labels.txt")
    data = json.loads(ref.save(tmp_path / "ref.json").read_text())
    jsonschema.validate(data, REFERENCE_SCHEMA)
    again = load_reference(tmp_path / "ref.json")
    assert again.n == 40 and again.to_dict() == ref.to_dict()
    x = float(np.sort(pred["overall"])[9])
    assert again.percentile_one(x) == pytest.approx(100 * 9.5 / 40)
    with pytest.raises(CalibrationError, match="other base weights"):
        again.check(fake_identity("9" * 64))
    with pytest.raises(CalibrationError, match="too few"):
        build_reference({t: v[:5] for t, v in pred.items()}, name="x", identity=fake_identity(),
                        sampling={"seed": None, "clips": 1})
    bad = copy.deepcopy(data)
    bad["scores"]["overall"] = list(reversed(bad["scores"]["overall"]))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CalibrationError, match="bad.json: the overall scores must be 40"):
        load_reference(tmp_path / "bad.json")


def test_non_finite_values_never_reach_a_file():
    pred, mos = synthetic(20)
    cal = fit_calibration(pred, mos, name="x", identity=fake_identity(), sampling={})
    assert all(math.isfinite(v) for v in cal.fits["overall"].params)


# --------------------------------------------------------------------------- commands


def _model_args(vectors_dir) -> list[str]:
    m = vector_model(vectors_dir)
    return ["--backend", "torch", "--config", str(m["config"]), "--weights", str(m["weights"]),
            "--clip-weights", str(m["clip_weights"])]


def _prepare(labelled_set, tmp_path, name, indices, with_mos=True):
    """A label file and an already-complete score CSV for ``indices`` of the set (cover-eval
    --resume then scores nothing: the commands are tested on the scores of the fixture)."""
    from cover_engine.runtime.eval.evaluate import EVAL_EXTRA
    from cover_engine.runtime.results import ScoreCsvWriter

    root = labelled_set["root"]
    labels = tmp_path / f"{name}.txt"
    names, mos = labelled_set["names"], labelled_set["mos"]
    labels.write_text("".join(f"{names[i]}, -1, -1, {float(mos[i])!r}\n" for i in indices))
    csv_path = tmp_path / f"{name}.cover.csv"
    with ScoreCsvWriter(csv_path, EVAL_EXTRA, resume=False) as writer:
        for i in indices:
            mos = float(labelled_set["mos"][i]) if with_mos else float("nan")
            writer.write(labelled_set["scores"][i], labelled_set["names"][i], mos=repr(mos))
    return labels, csv_path, root


@pytest.fixture(scope="module")
def fitted(labelled_set, tmp_path_factory, vectors_dir):
    """``cover-eval --fit-calibration`` on the first ``N_FIT`` videos."""
    from click.testing import CliRunner

    from cover_engine.runtime.cli.eval import main as eval_main

    tmp = tmp_path_factory.mktemp("fit")
    labels, csv_path, root = _prepare(labelled_set, tmp, "fit", range(N_FIT))
    cal_path = tmp / "cal.json"
    result = CliRunner().invoke(eval_main, ["--labels", str(labels), "--root", str(root),
                                            "--csv", str(csv_path), "--resume",
                                            "--fit-calibration", str(cal_path),
                                            "--mos-scale", "1,5"] + _model_args(vectors_dir))
    assert result.exit_code == 0, result.output
    return cal_path, result


def test_cover_eval_fits_and_reports_on_the_calibrated_scale(labelled_set, fitted, tmp_path,
                                                              vectors_dir):
    from click.testing import CliRunner

    from cover_engine.runtime.cli.eval import main as eval_main

    cal_path, fit_result = fitted
    assert f"calibration 'fit' -> {cal_path}: {N_FIT} videos, MOS scale 1-5 (given)" in \
        fit_result.output
    cal = load_calibration(cal_path)
    scores, mos = labelled_set["scores"], labelled_set["mos"]
    direct = fit_calibration(preds(scores[:N_FIT]), mos[:N_FIT], name="fit",
                             identity=cal.identity, sampling={"seed": None, "clips": 1})
    assert cal.fits == direct.fits and cal.labels == "fit.txt" and cal.backend == "torch"

    labels, csv_path, root = _prepare(labelled_set, tmp_path, "held", range(N_FIT, N_VIDEOS))
    report_path = tmp_path / "held.json"
    result = CliRunner().invoke(eval_main, ["--labels", str(labels), "--root", str(root),
                                            "--csv", str(csv_path), "--resume",
                                            "--calibration", str(cal_path),
                                            "--json", str(report_path)] + _model_args(vectors_dir))
    assert result.exit_code == 0, result.output
    assert "on the MOS scale of calibration 'fit'" in result.output
    calibrated = json.loads(report_path.read_text())["calibrated"]["metrics"]["overall"]
    held_raw = preds(scores[N_FIT:])["overall"]
    raw_rmse = float(np.sqrt(np.mean((held_raw - mos[N_FIT:]) ** 2)))
    assert calibrated["n"] == N_VIDEOS - N_FIT and calibrated["rmse"] < 0.1 * raw_rmse


def test_cover_eval_refuses_other_weights_and_small_sets(labelled_set, fitted, tmp_path,
                                                         vectors_dir):
    from click.testing import CliRunner

    from cover_engine.runtime.cli.eval import main as eval_main

    cal_path, _ = fitted
    labels, csv_path, root = _prepare(labelled_set, tmp_path, "few", range(6))
    config = str(vector_model(vectors_dir)["config"])
    result = CliRunner().invoke(eval_main, ["--labels", str(labels), "--root", str(root),
                                            "--csv", str(csv_path), "--resume", "--calibration",
                                            str(cal_path), "--backend", "torch",
                                            "--random-weights", "--config", config])
    assert result.exit_code == 1 and "other base weights" in result.output
    assert "Traceback" not in result.output and result.output.count("\n") <= 2
    out = tmp_path / "small.json"
    result = CliRunner().invoke(eval_main, ["--labels", str(labels), "--root", str(root),
                                            "--csv", str(csv_path), "--resume",
                                            "--fit-calibration", str(out)]
                                + _model_args(vectors_dir))
    assert result.exit_code == 1 and "6 scored videos are too few" in result.output
    assert f"no calibration written to {out}" in result.output and not out.exists()


def test_reference_distribution_needs_no_labels(labelled_set, tmp_path, vectors_dir):
    from click.testing import CliRunner

    from cover_engine.runtime.cli.eval import main as eval_main

    _, csv_path, root = _prepare(labelled_set, tmp_path, "all", range(N_VIDEOS), with_mos=False)
    dist = tmp_path / "dist.json"
    result = CliRunner().invoke(eval_main, ["--root", str(root), "--csv", str(csv_path),
                                            "--resume", "--reference-distribution", str(dist),
                                            "--calibration-name", "library"]
                                + _model_args(vectors_dir))
    assert result.exit_code == 0, result.output
    ref = load_reference(dist)
    assert ref.n == N_VIDEOS and ref.name == "library"
    np.testing.assert_array_equal(ref.scores["overall"], np.sort(preds(labelled_set["scores"])
                                                                 ["overall"]))
    result = CliRunner().invoke(eval_main, ["--root", str(root), "--fit-calibration", "x.json"])
    assert result.exit_code == 2 and "--labels is required" in result.output


def test_cover_run_adds_mos_and_percentile_beside_raw_scores(labelled_set, fitted, tmp_path,
                                                             vectors_dir):
    import csv

    from click.testing import CliRunner

    from cover_engine.runtime.cli.run import main as run_main

    cal_path, _ = fitted
    cal = load_calibration(cal_path)
    ref = build_reference(preds(labelled_set["scores"]), name="r", identity=cal.identity,
                          sampling={"seed": None, "clips": 1})
    ref_path = ref.save(tmp_path / "ref.json")
    videos = [str(labelled_set["root"] / labelled_set["names"][i]) for i in (N_FIT, N_FIT + 1)]
    out_csv = tmp_path / "scores.csv"
    args = videos + ["--calibration", str(cal_path), "--percentile-of", str(ref_path), "-q"] \
        + _model_args(vectors_dir)
    result = CliRunner().invoke(run_main, args + ["--json", "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    with open(out_csv, newline="") as f:
        table = list(csv.DictReader(f))
    for row, line, expected in zip(rows, table, labelled_set["scores"][N_FIT:]):
        assert row["overall"] == pytest.approx(expected.overall, abs=1e-9)  # raw kept
        assert row["mos"] == cal.predict_one(row["overall"])
        assert row["percentile"] == ref.percentile_one(row["overall"])
        assert float(line["mos"]) == row["mos"] and float(line["percentile"]) == row["percentile"]
        assert float(line["overall"]) == row["overall"]
    result = CliRunner().invoke(run_main, args)
    header = result.output.splitlines()[0].split()
    assert header[:7] == ["file", "semantic", "technical", "aesthetic", "overall", "mos",
                          "percentile"]

    config = str(vector_model(vectors_dir)["config"])
    result = CliRunner().invoke(run_main, videos[:1] + [
        "--calibration", str(cal_path), "--backend", "torch", "--random-weights", "--config",
        config, "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "calibration 'fit' was fitted for other base weights" in result.output


def test_cover_run_segments_json_csv_and_timeline_plot(fitted, tmp_path, vectors_dir):
    import csv

    from click.testing import CliRunner

    from cover_engine.runtime.cli.run import main as run_main

    pytest.importorskip("matplotlib")
    cal_path, _ = fitted
    cal = load_calibration(cal_path)
    out_csv, plot = tmp_path / "scores.csv", tmp_path / "timeline.png"
    result = CliRunner().invoke(run_main, [str(SAMPLE), "--segments", "1", "--json", "--csv",
                                           str(out_csv), "--timeline-plot", str(plot),
                                           "--calibration", str(cal_path), "-q"]
                                + _model_args(vectors_dir))
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.output.splitlines()]
    segments = row["segments"]
    assert [(s["start"], s["end"], s["frames"]) for s in segments] == \
        [(0.0, 1.0, 30), (1.0, 2.0, 30), (2.0, pytest.approx(64 / 30), 4)]
    for key in ("semantic", "technical", "aesthetic", "overall"):
        assert row[key] == pytest.approx(np.mean([s[key] for s in segments]), abs=1e-12)
    assert all(s["mos"] == cal.predict_one(s["overall"]) for s in segments)
    assert row["mos"] == cal.predict_one(row["overall"])
    with open(tmp_path / "scores.segments.csv", newline="") as f:
        windows = list(csv.DictReader(f))
    assert [w["segment"] for w in windows] == ["0", "1", "2"]
    assert [float(w["overall"]) for w in windows] == [s["overall"] for s in segments]
    assert [float(w["mos"]) for w in windows] == [s["mos"] for s in segments]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    result = CliRunner().invoke(run_main, [str(SAMPLE), "--timeline-plot", str(plot)])
    assert result.exit_code == 2 and "--timeline-plot needs --segments" in result.output
    result = CliRunner().invoke(run_main, [str(SAMPLE), "--segments", "0"])
    assert result.exit_code == 2 and "more than 0 seconds" in result.output


# --------------------------------------------------------------------------- the manifest


def _random_identity(vectors_dir) -> ModelIdentity:
    return identity_from_options(backend="torch", random_weights=True,
                                 config=vector_model(vectors_dir)["config"])


def test_cover_export_refuses_a_calibration_for_other_weights(tmp_path, vectors_dir):
    from click.testing import CliRunner

    from cover_engine.runtime.cli.export import main as export_main

    pred, mos = synthetic(20)
    cal = fit_calibration(pred, mos, name="other", identity=fake_identity(),
                          sampling={"seed": None, "clips": 1})
    out = tmp_path / "eng"
    result = CliRunner().invoke(export_main, [
        "--random-weights", "--config", str(vector_model(vectors_dir)["config"]), "--out",
        str(out), "--calibration", str(cal.save(tmp_path / "cal.json")), "-q"])
    assert result.exit_code == 1 and "other base weights" in result.output
    assert not out.exists()  # refused before anything was exported


def test_manifest_carries_the_calibration_for_any_host(tmp_path, vectors_dir):
    """cover-export --calibration: the manifest holds it (schema-valid), cover-run with that
    engine folder reports the calibrated MOS, and the formula applied by hand to the manifest's
    numbers -- what a C++ host does -- gives the same MOS."""
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("onnx")
    from click.testing import CliRunner

    from cover_engine.runtime.cli.export import main as export_main
    from cover_engine.runtime.cli.run import main as run_main
    from cover_engine.runtime.engines.manifest import MANIFEST_SCHEMA, load_manifest

    pred, mos = synthetic(20)
    pred = {t: v * 0.02 - 1.6 for t, v in pred.items()}  # near this model's raw scores
    cal = fit_calibration(pred, mos, name="for-random", identity=_random_identity(vectors_dir),
                          sampling={"seed": None, "clips": 1})
    out = tmp_path / "eng"
    result = CliRunner().invoke(export_main, [
        "--random-weights", "--config", str(vector_model(vectors_dir)["config"]), "--out",
        str(out), "--calibration", str(cal.save(tmp_path / "cal.json")), "--no-images",
        "--no-check", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(data, MANIFEST_SCHEMA)
    from cover_engine.runtime.engines.manifest import SCHEMA_VERSION

    assert data["schema_version"] == SCHEMA_VERSION and data["calibration"] == cal.to_dict()
    assert load_manifest(out).calibration == cal.to_dict()

    result = CliRunner().invoke(run_main, [str(SAMPLE), "--backend", "onnxruntime", "--engines",
                                           str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert "calibration 'for-random' from the engine folder's manifest" in result.output
    row = json.loads(result.output.strip().splitlines()[-1])
    f = data["calibration"]["fits"]["overall"]
    by_hand = f["b2"] + (f["b1"] - f["b2"]) / (1 + math.exp(-(row["overall"] - f["b3"])
                                                           / abs(f["b4"])))
    assert row["mos"] == pytest.approx(by_hand, rel=1e-12)
