"""cover-eval: label parsing, the crash-safe score CSV, resume, missing/unreadable videos, the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from cover_engine.runtime.cli import eval as cli_eval
from cover_engine.runtime.eval import evaluate as ev
from cover_engine.runtime.errors import CoverError, EngineError, InputError, OutputError
from cover_engine.runtime.eval.labels import LabelItem, locate, read_labels
from cover_engine.runtime.results import SCORE_COLUMNS, FileScore, RowLog, read_rows
from helpers.fake_scorer import FakeScorer, make_set

# ---------------------------------------------------------------------------------------------
# Labels


def test_upstream_labels(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("KoNViD_1k_videos/4542323058.mp4, 8.008, 29.97, 3.22\n\n"
                 "Video/A001.mp4, -1, -1, 80.232\n")
    items = read_labels(f)
    assert items == [LabelItem("KoNViD_1k_videos/4542323058.mp4", 3.22, 1),
                     LabelItem("Video/A001.mp4", 80.232, 3)]
    assert read_labels(f, "upstream") == items


def test_csv_labels_default_and_chosen_columns(tmp_path):
    f = tmp_path / "meta.csv"
    f.write_bytes("\ufeffFile,Resolution,MOS,DMOS\nA001.mp4,1080,80.2,10\nA002.mp4,720,57.3,30\n".encode())
    assert [(i.name, i.mos) for i in read_labels(f)] == [("A001.mp4", 80.2), ("A002.mp4", 57.3)]
    chosen = read_labels(f, "csv", name_column="file", mos_column="DMOS")
    assert [(i.name, i.mos, i.line) for i in chosen] == [("A001.mp4", 10.0, 2), ("A002.mp4", 30.0, 3)]
    g = tmp_path / "semi.csv"
    g.write_text("name;mos\nclip one.mp4;3.5\nclip two.mp4;4.25\n")
    assert [(i.name, i.mos) for i in read_labels(g)] == [("clip one.mp4", 3.5), ("clip two.mp4", 4.25)]


@pytest.mark.parametrize(
    "text,fmt,kwargs,needle",
    [
        ("a.mp4,1,2,3\nb.mp4,1,2\n", "auto", {}, "labels.txt:2: expected 'filename,a,t,mos'"),
        ("a.mp4,1,2,3\na.mp4,1,2,4\n", "auto", {}, "labels.txt:2: 'a.mp4' is already listed on line 1"),
        ("video,quality\na.mp4,3\n", "auto", {}, "no MOS column found among video, quality"),
        ("name,mos\na.mp4,3\n", "csv", {"mos_column": "MOSFull"},
         "no column 'MOSFull'; columns are name, mos"),
        ("name,mos\na.mp4,good\n", "csv", {}, "labels.txt:2: need a name and a numeric mos"),
        ("a.mp4,1,2,3\n", "upstream", {"mos_column": "mos"}, "apply to CSV files"),
        ("\n\n", "auto", {}, "empty label file"),
    ],
)
def test_bad_labels_name_file_and_cause(tmp_path, text, fmt, kwargs, needle):
    f = tmp_path / "labels.txt"
    f.write_text(text)
    with pytest.raises(InputError) as info:
        read_labels(f, fmt, **kwargs)
    assert needle in str(info.value) and str(f) in str(info.value)


def test_locate(tmp_path):
    (tmp_path / "4542323058.mp4").write_bytes(b"x")
    (tmp_path / "plain").write_bytes(b"x")
    assert locate(tmp_path, "4542323058") == tmp_path / "4542323058.mp4"
    assert locate(tmp_path, "plain") == tmp_path / "plain"
    assert locate("/nonexistent", str(tmp_path / "plain")) == tmp_path / "plain"
    assert locate(tmp_path, "absent.mp4") is None


# ---------------------------------------------------------------------------------------------
# The score CSV


def test_file_score_row_round_trip_is_exact():
    s = FileScore("a/b.mp4", 0.1 + 0.2, -1e-17, 3.0, 1 / 3, 240, "1920x1080", "onnxruntime", 1.23456,
                  colour="exact")
    row = s.to_row()
    assert tuple(row) == SCORE_COLUMNS and row["name"] == "a/b.mp4"
    back = FileScore.from_row(row)
    assert (back.semantic, back.technical, back.overall) == (s.semantic, s.technical, s.overall)
    assert back.frames == 240 and back.resolution == "1920x1080" and back.seconds == pytest.approx(1.2346)
    assert row["colour"] == back.colour == "exact"


def test_row_log_appends_durably_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out" / "scores.csv"
    with RowLog(path, ("name", "x")) as log:
        log.append({"name": "a,b \"quoted\".mp4", "x": 1})
        assert read_rows(path)[1] == [{"name": 'a,b "quoted".mp4', "x": "1"}]  # on disk before close
        with pytest.raises(InputError, match="line breaks"):
            log.append({"name": "two\nlines", "x": 2})
        with pytest.raises(ValueError):
            log.append({"name": "c", "y": 2})
    with pytest.raises(OutputError, match="already holds results"):
        RowLog(path, ("name", "x"))
    with pytest.raises(OutputError, match="do not match"):
        RowLog(path, ("name", "x", "mos"), resume=True)


def test_row_log_resume_drops_torn_row_and_keeps_everything_before(tmp_path):
    path = tmp_path / "scores.csv"
    with RowLog(path, ("name", "x")) as log:
        for i in range(3):
            log.append({"name": f"v{i}", "x": i})
    complete = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b"v3,")  # killed mid-row: the last field is not there
    assert [r["name"] for r in read_rows(path)[1]] == ["v0", "v1", "v2"]
    with RowLog(path, ("name", "x"), resume=True) as log:
        assert log.dropped == b"v3,"
        assert [r["name"] for r in log.rows] == ["v0", "v1", "v2"]
        log.append({"name": "v3", "x": 3})
    data = path.read_bytes()
    assert data.startswith(complete) and data[len(complete):] == b"v3,3\n"


def test_row_log_torn_header_is_rewritten(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_bytes(b"name,sem")
    with RowLog(path, SCORE_COLUMNS, resume=True) as log:
        assert log.rows == [] and log.dropped == b"name,sem"
    assert path.read_text() == ",".join(SCORE_COLUMNS) + "\n"


def test_row_log_leaves_a_foreign_file_untouched(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("when,what\nmonday,plan")  # no final newline, as editors often save
    with pytest.raises(OutputError, match="do not match"):
        RowLog(path, ("name", "x"), resume=True)
    torn = tmp_path / "torn.csv"
    torn.write_text("hello")
    with pytest.raises(OutputError, match="not a results file"):
        RowLog(torn, ("name", "x"), resume=True)
    assert path.read_text() == "when,what\nmonday,plan" and torn.read_text() == "hello"


def test_row_log_malformed_middle_row_is_an_error_not_dropped(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("name,x\na,1\nb,2,extra\nc,3\n")
    with pytest.raises(OutputError, match=r"scores.csv:3: malformed row"):
        RowLog(path, ("name", "x"), resume=True)
    assert path.read_text() == "name,x\na,1\nb,2,extra\nc,3\n"


# ---------------------------------------------------------------------------------------------
# evaluate()


def test_evaluate_scores_the_set_and_lists_missing_and_unreadable(tmp_path):
    labels, items = make_set(tmp_path, n=12, missing={3}, corrupt={5, 8})
    scorer = FakeScorer()
    run = ev.evaluate(read_labels(labels), scorer, tmp_path / "s.csv", root=tmp_path, progress=False)
    assert run.missing == ["videos/v003.mp4"]
    assert [n for n, _ in run.failed] == ["videos/v005.mp4", "videos/v008.mp4"]
    assert "not a video (moov atom not found)" in run.failed[0][1]  # one line
    assert len(scorer.calls) == 11 and len(run.scores) == 9

    header, rows = read_rows(tmp_path / "s.csv")
    assert header == list(ev.EVAL_COLUMNS)
    assert [r["name"] for r in rows] == [i.name for i in run.scored]
    assert [float(r["mos"]) for r in rows] == [i.mos for i in items if i.name in run.scores]
    errors = read_rows(run.errors_path)[1]
    assert [r["name"] for r in errors] == ["videos/v005.mp4", "videos/v008.mp4"]

    metrics = run.metrics()
    assert set(metrics) == {"overall", "semantic", "technical", "aesthetic"}
    pred, mos = run.values("overall")
    assert metrics["overall"].n == 9
    assert metrics["overall"].srocc == pytest.approx(stats.spearmanr(pred, mos)[0])
    assert metrics["semantic"].srocc > 0.8  # the fake's semantic score is monotone in quality


def test_evaluate_resumes_after_a_crash(tmp_path):
    labels, _ = make_set(tmp_path, n=10)
    items = read_labels(labels)
    csv = tmp_path / "s.csv"
    crashing = FakeScorer(fail_at=5, exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(items, crashing, csv, root=tmp_path, progress=False)
    assert len(read_rows(csv)[1]) == 4  # everything before the video in flight
    with open(csv, "ab") as f:
        f.write(b"videos/v004.mp4,0.5")  # and a row torn by the crash
    before = csv.read_bytes()[: -len(b"videos/v004.mp4,0.5")]

    with pytest.raises(OutputError, match="already holds results"):
        ev.evaluate(items, FakeScorer(), csv, root=tmp_path, progress=False)
    resumed = FakeScorer()
    run = ev.evaluate(items, resumed, csv, root=tmp_path, resume=True, progress=False)
    assert run.dropped_partial_row and run.resumed == 4
    assert resumed.calls == [f"v{i:03d}.mp4" for i in range(4, 10)]
    assert csv.read_bytes().startswith(before)
    assert [r["name"] for r in read_rows(csv)[1]] == [i.name for i in items]

    clean = ev.evaluate(items, FakeScorer(), tmp_path / "clean.csv", root=tmp_path, progress=False)
    for target in ev.TARGETS:
        np.testing.assert_array_equal(run.values(target)[0], clean.values(target)[0])

    never = lambda: pytest.fail("a finished run must not build a scorer")  # noqa: E731
    again = ev.evaluate(items, never, csv, root=tmp_path, resume=True, progress=False)
    assert again.resumed == 10 and len(read_rows(csv)[1]) == 10


KILLED_RUN = """
import os, signal, sys
from cover_engine.runtime.eval.evaluate import evaluate
from cover_engine.runtime.eval.labels import read_labels
from cover_engine.runtime.results import FileScore

class Dies:
    calls = 0
    def score(self, path):
        self.calls += 1
        if self.calls == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # no unwinding, no close()
        q = float(open(path).read())
        return FileScore(str(path), q, q, q, 3 * q, 30, "64x48", "fake", 0.01)

root, csv = sys.argv[1], sys.argv[2]
evaluate(read_labels(os.path.join(root, "labels.txt")), Dies(), csv, root=root, progress=False)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_the_process_is_killed(tmp_path):
    labels, _ = make_set(tmp_path, n=7)
    csv = tmp_path / "s.csv"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path), str(csv)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert len(read_rows(csv)[1]) == 3
    resumed = FakeScorer()
    run = ev.evaluate(read_labels(labels), resumed, csv, root=tmp_path, resume=True, progress=False)
    assert run.resumed == 3 and resumed.calls == [f"v{i:03d}.mp4" for i in range(3, 7)]
    assert len(read_rows(csv)[1]) == 7


def test_evaluate_retries_failed_videos_on_resume(tmp_path):
    labels, _ = make_set(tmp_path, n=6, corrupt={2})
    items = read_labels(labels)
    csv = tmp_path / "s.csv"
    first = ev.evaluate(items, FakeScorer(), csv, root=tmp_path, progress=False)
    assert [n for n, _ in first.failed] == ["videos/v002.mp4"]
    (tmp_path / "videos/v002.mp4").write_text("4.5")  # replaced by a good copy
    retry = FakeScorer()
    run = ev.evaluate(items, retry, csv, root=tmp_path, resume=True, progress=False)
    assert retry.calls == ["v002.mp4"] and not run.failed and len(run.scores) == 6


def test_unexpected_errors_are_listed_but_a_broken_setup_stops(tmp_path, monkeypatch):
    labels, _ = make_set(tmp_path, n=8)
    items = read_labels(labels)
    odd = FakeScorer(fail_at=2, exc=ValueError("odd stream"))
    run = ev.evaluate(items, odd, tmp_path / "a.csv", root=tmp_path, progress=False)
    assert run.failed == [("videos/v001.mp4", "ValueError: odd stream")] and len(run.scores) == 7

    class Broken(FakeScorer):
        def score(self, path):
            self.calls.append(path)
            raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(ev, "MAX_CONSECUTIVE_ERRORS", 3)
    broken = Broken()
    with pytest.raises(CoverError, match="3 videos in a row failed.*RuntimeError: CUDA error: out of memory"):
        ev.evaluate(items, broken, tmp_path / "b.csv", root=tmp_path, progress=False)
    assert len(broken.calls) == 3

    engine = FakeScorer(fail_at=1, exc=EngineError("engine file is for another GPU"))
    with pytest.raises(EngineError):
        ev.evaluate(items, engine, tmp_path / "c.csv", root=tmp_path, progress=False)


def test_rescaled_rows_keep_raw_scores(tmp_path):
    labels, _ = make_set(tmp_path, n=7)
    run = ev.evaluate(read_labels(labels), FakeScorer(), tmp_path / "s.csv", root=tmp_path, progress=False)
    rows = ev.rescaled_rows(run)
    raw = np.array([r["overall"] for r in rows])
    np.testing.assert_array_equal(raw, run.values("overall")[0])
    z = np.array([r["overall_z"] for r in rows])
    assert z.mean() == pytest.approx(0, abs=1e-12) and z.std() == pytest.approx(1)
    ranks = np.array([r["technical_rank"] for r in rows])
    assert ranks.min() == 0 and ranks.max() == 1
    np.testing.assert_allclose([r["overall_100"] for r in rows], 100 / (1 + np.exp(-raw)))


# ---------------------------------------------------------------------------------------------
# The command line, with the fake scorer injected


@pytest.fixture
def fake_cli(monkeypatch):
    built = []

    def build(**options):
        built.append(options)
        return FakeScorer()

    monkeypatch.setattr(cli_eval, "build_scorer", build)
    return built


def test_cli_end_to_end_with_fake_scorer(tmp_path, fake_cli):
    pytest.importorskip("matplotlib")
    labels, _ = make_set(tmp_path, n=20, missing={0}, corrupt={7})
    out = tmp_path / "out"
    out.mkdir()
    args = ["--labels", str(labels), "--root", str(tmp_path), "--backend", "onnxruntime", "--seed", "3",
            "--csv", str(out / "scores.csv"), "--json", str(out / "m.json"), "--plot", str(out / "fit.png"),
            "--rescaled", str(out / "rescaled.csv")]
    result = CliRunner().invoke(cli_eval.main, args)
    assert result.exit_code == 0, result.output
    assert fake_cli[0]["backend"] == "onnxruntime" and fake_cli[0]["seed"] == 3
    assert "scored 18 of 20 labelled videos" in result.output
    assert "missing: videos/v000.mp4" in result.output and "unreadable: videos/v007.mp4" in result.output

    report = json.loads((out / "m.json").read_text())
    assert report["scored"] == 18 and report["missing"] == ["videos/v000.mp4"]
    assert [u["name"] for u in report["unreadable"]] == ["videos/v007.mp4"]
    assert report["backends"] == ["fake"] and report["colours"] == ["decord"]
    assert set(report["metrics"]) == {"overall", "semantic", "technical", "aesthetic"}
    assert report["metrics"]["overall"]["n"] == 18 and len(report["metrics"]["overall"]["fit"]) == 4
    assert (out / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, rows = read_rows(out / "rescaled.csv")
    assert header[:3] == ["name", "mos", "overall"] and "overall_100" in header and len(rows) == 18

    again = CliRunner().invoke(cli_eval.main, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(cli_eval.main, args + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "(18 from an earlier run" in resumed.output and len(fake_cli) == 2  # v007 was retried


def test_cli_default_csv_limit_and_fit_failure(tmp_path, fake_cli):
    labels, _ = make_set(tmp_path, n=10)
    result = CliRunner().invoke(cli_eval.main, ["--labels", str(labels), "--root", str(tmp_path), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert len(read_rows(tmp_path / "labels.cover.csv")[1]) == 3
    assert "overall: logistic fit failed: a 4-parameter fit needs at least 4 videos, got 3" in result.output


def test_cli_reports_bad_labels_and_empty_runs(tmp_path, fake_cli):
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mp4,1,2\n")
    result = CliRunner().invoke(cli_eval.main, ["--labels", str(bad), "--format", "upstream"])
    assert result.exit_code == 1 and "bad.txt:1: expected 'filename,a,t,mos'" in result.output
    labels, _ = make_set(tmp_path, n=3, missing={0, 1, 2})
    result = CliRunner().invoke(cli_eval.main, ["--labels", str(labels), "--root", str(tmp_path)])
    assert result.exit_code == 1 and "no video was scored" in result.output and not fake_cli


# ---------------------------------------------------------------------------------------------
# The real pipeline on generated videos, random weights from the reference vectors: plumbing,
# not accuracy. Runs once runtime/scoring.py exists.


def write_video(path: Path, frames: int, noise: float, seed: int) -> None:
    av = pytest.importorskip("av")
    rng = np.random.default_rng(seed)
    base = np.zeros((48, 64, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)
    base[..., 1] = np.linspace(0, 255, 48, dtype=np.uint8)[:, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for t in range(frames):
            img = np.roll(base, t, axis=1).astype(np.float64) + rng.normal(0, noise, base.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_end_to_end_real_pipeline(tmp_path, vectors_dir):
    pytest.importorskip("cover_engine.runtime.scoring")
    pytest.importorskip("torch")
    root = tmp_path / "set"
    root.mkdir()
    lines = []
    for i, noise in enumerate([0.0, 8.0, 24.0, 48.0, 80.0]):
        write_video(root / f"clip{i}.mp4", frames=24, noise=noise, seed=i)
        lines.append(f"clip{i}.mp4, -1, -1, {5.0 - i * 0.8}")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    lines += ["broken.mp4, -1, -1, 2.0", "absent.mp4, -1, -1, 3.0"]
    labels = root / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    args = ["--labels", str(labels), "--root", str(root), "--backend", "torch", "--random-weights",
            "--config", str(vectors_dir / "model" / "config.json"), "--json", str(tmp_path / "m.json")]
    result = CliRunner().invoke(cli_eval.main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["scored"] == 5 and report["missing"] == ["absent.mp4"]
    assert [u["name"] for u in report["unreadable"]] == ["broken.mp4"]
    assert report["metrics"]["overall"]["n"] == 5
    rows = read_rows(root / "labels.cover.csv")[1]
    for row in rows:
        s = FileScore.from_row(row)
        assert np.isfinite([s.semantic, s.technical, s.aesthetic]).all()
        assert s.overall == pytest.approx(s.semantic + s.technical + s.aesthetic, rel=1e-5, abs=1e-6)
        assert s.resolution == "64x48" and s.frames == 24
