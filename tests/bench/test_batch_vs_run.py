"""``bench.batch_vs_run``: the command behind BENCHMARKS.md's cover-batch against cover-run rows."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("ray.data", reason="the ray extra is not installed")

from cover_engine.bench.batch_vs_run import main  # noqa: E402


def test_every_row_runs_over_the_same_generated_clips(tmp_path, vectors_dir, monkeypatch):
    monkeypatch.setenv("COVER_HOME", str(tmp_path / "home"))
    report = tmp_path / "r.json"
    res = CliRunner().invoke(main, [
        "--folder", str(tmp_path), "--files", "3", "--size", "96x64", "--seconds", "0.4",
        "--rounds", "1", "--no-running-ray", "--config", str(vectors_dir / "model" / "config.json"),
        "--json", str(report)])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert set(data["times_s"]) == {"cover-run", "cover-batch", "Ray Data, no-op workers"}
    assert all(len(t) == 1 and t[0] > 0 for t in data["times_s"].values())
    assert len(list((tmp_path / "3x96x64x0.4s").glob("*.mp4"))) == 3
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert len(rows) == 3 and all(r["error"] is None for r in rows)  # cover-batch scored them all
