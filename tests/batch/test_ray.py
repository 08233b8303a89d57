"""cover-batch on a local Ray (``ray.init(num_cpus=2)``) with the reference vectors' small model:
error rows, scores equal to cover-run, the Ray Data API for users, resume after a SIGKILL."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason="the ray extra is not installed")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from click.testing import CliRunner  # noqa: E402

from cover_engine.bench.clips import write_clip  # noqa: E402
from cover_engine.runtime.batch import CoverScorer  # noqa: E402
from cover_engine.runtime.batch.driver import BatchSettings, run_batch  # noqa: E402
from cover_engine.runtime.batch.schema import result_schema  # noqa: E402
from cover_engine.runtime.batch.store import ResultStore  # noqa: E402
from cover_engine.runtime.cli.batch import main as batch_main  # noqa: E402
from cover_engine.runtime.cli.run import main as cover_run  # noqa: E402

SCORES = ("semantic", "technical", "aesthetic", "overall")


@pytest.fixture(scope="module")
def engines(tmp_path_factory, vectors_dir):
    """The small model's video graphs, exported once (with the reference vectors' weights)."""
    from cover_engine.export.onnx_export import export_all

    model = vectors_dir / "model"
    out = tmp_path_factory.mktemp("engines") / "small-fp32"
    export_all(out, config=model / "config.json", weights=model / "cover.pth",
               clip_weights=model / "clip.pt", precision="fp32", modes=("video",),
               check=False, log=lambda msg: None)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for i in range(6):
        write_clip(folder / f"clip{i}.mp4", 96 + 32 * (i % 3), 64 + 16 * (i % 2), 24 + 4 * i,
                   seed=i)
    return folder


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 ** 2)
    yield ray
    ray.shutdown()


def _cover_run(files, engines) -> dict[str, dict]:
    res = CliRunner().invoke(cover_run, [str(f) for f in files] + [
        "--backend", "onnxruntime", "--engines", str(engines), "--json", "-q"])
    return {o["path"]: o for o in map(json.loads, res.stdout.splitlines()) if o}


def test_batch_rows_match_cover_run_and_bad_files_are_rows(tmp_path, engines, clips, local_ray):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    good = sorted(clips.glob("*.mp4"))
    listed = tmp_path / "list.csv"                 # a CSV list: relative to its own folder
    listed.write_text("path,label\nempty.mp4,1\nnotes.mp4,2\ngone.mp4,3\n")
    paths = [str(p) for p in good] + [str(empty), str(text), str(tmp_path / "gone.mp4")]
    out, out_csv = tmp_path / "res.parquet", tmp_path / "res.csv"
    res = CliRunner().invoke(batch_main, [str(clips), str(listed), str(tmp_path / "none*.mkv"),
                                          "--out", str(out), "--csv", str(out_csv),
                                          "--backend", "onnxruntime", "--engines", str(engines),
                                          "--workers", "2", "--batch-size", "2"])
    assert res.exit_code == 1, res.output                     # failures and a pattern matched nothing
    assert "9 inputs: 6 scored, 3 failed, 0 already done; 9 rows" in res.stderr
    assert "none*.mkv: pattern matched no files" in res.stderr
    table = pq.read_table(out)
    assert table.schema.equals(result_schema())
    rows = {r["path"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(paths)
    expected = _cover_run(good, engines)
    assert len(expected) == 6
    for path, want in expected.items():
        row = rows[path]
        assert row["error"] is None and row["fingerprint"].startswith("sampled:")
        for k in SCORES:
            assert row[k] == pytest.approx(want[k], abs=1e-6)
        assert (row["frames"], row["resolution"], row["backend"], row["colour"]) == \
            (want["frames"], want["resolution"], "onnxruntime", want["colour"])
    for bad in (empty, text, tmp_path / "gone.mp4"):
        row = rows[str(bad)]
        assert row["overall"] is None and row["frames"] is None
        assert row["error"].startswith(str(bad)) and "\n" not in row["error"]
        assert row["error"] in res.stderr                     # listed at the end
    assert "cannot read" in rows[str(tmp_path / "gone.mp4")]["error"]
    assert rows[str(tmp_path / "gone.mp4")]["fingerprint"] is None
    csv_lines = out_csv.read_text().splitlines()
    assert csv_lines[0].replace('"', "").split(",") == result_schema().names
    assert len(csv_lines) == 10
    assert not ResultStore(out).parts_dir.exists()

    again = CliRunner().invoke(batch_main, [str(clips), "--out", str(out), "--engines",
                                            str(engines), "--backend", "onnxruntime"])
    assert again.exit_code == 0, again.output                 # nothing left to do: no Ray needed
    assert "6 inputs: 0 scored, 0 failed, 6 already done; 9 rows" in again.stderr


def test_cover_scorer_with_ray_data_map_batches(engines, clips, local_ray):
    """The documented way for users who run Ray Data pipelines of their own."""
    import ray.data

    files = sorted(str(p) for p in clips.glob("*.mp4"))[:4]
    ds = ray.data.from_items([{"path": p} for p in files], override_num_blocks=2)
    scored = ds.map_batches(CoverScorer, fn_constructor_kwargs={"engines": str(engines)},
                            compute=ray.data.ActorPoolStrategy(size=2), batch_size=2,
                            num_cpus=1).take_all()
    assert sorted(r["path"] for r in scored) == files
    expected = _cover_run(files, engines)
    for r in scored:
        assert r["error"] is None
        assert r["overall"] == pytest.approx(expected[r["path"]]["overall"], abs=1e-6)


def _durable_rows(store: ResultStore) -> int:
    return store.load().table.num_rows if store.parts_dir.exists() else 0


def test_resume_after_sigkill_scores_nothing_twice(tmp_path, engines, clips, local_ray):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(16):  # long enough that the kill lands mid-run
        shutil.copy(sorted(clips.glob("*.mp4"))[i % 6], folder / f"f{i:02d}.mp4")
        with open(folder / f"f{i:02d}.mp4", "ab") as f:
            f.write(bytes([i]))   # distinct content per file (trailing byte after the moov box)
    paths = sorted(str(p) for p in folder.glob("*.mp4"))
    out = tmp_path / "res.parquet"
    store = ResultStore(out)
    proc = subprocess.Popen([sys.executable, "-m", "cover_engine.runtime.cli.batch", str(folder),
                             "--out", str(out), "--backend", "onnxruntime", "--engines",
                             str(engines), "--workers", "2", "--batch-size", "1", "-q"],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while _durable_rows(store) < 3:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no rows written in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    kept = store.load().table
    assert 3 <= kept.num_rows < len(paths), "killed too late to test a resume"
    assert not out.exists()                      # the final file is only ever written whole

    summary = run_batch(paths, out, dict(backend="onnxruntime", engines=engines),
                        BatchSettings(workers=2, batch_size=2), log=lambda m: None)
    assert summary.skipped == kept.num_rows      # nothing scored twice...
    assert summary.scored + summary.failed == len(paths) - kept.num_rows
    final = pq.read_table(out)                   # ...nothing lost, one row each
    assert sorted(final.column("path").to_pylist()) == paths
    assert final.column("error").null_count == len(paths)
    before = {r["path"]: r["overall"] for r in kept.to_pylist()}
    after = {r["path"]: r["overall"] for r in final.to_pylist()}
    assert all(after[p] == v for p, v in before.items())

    with open(paths[0], "ab") as f:             # changed content: scored again, the rest not
        f.write(b"more")
    again = run_batch(paths, out, dict(backend="onnxruntime", engines=engines),
                      BatchSettings(workers=1, batch_size=2), log=lambda m: None)
    assert (again.skipped, again.scored, again.rows) == (len(paths) - 1, 1, len(paths))


def test_more_workers_than_memory_holds_is_refused(tmp_path, engines, clips, local_ray):
    out = tmp_path / "res.parquet"
    res = CliRunner().invoke(batch_main, [str(clips), "--out", str(out), "--backend",
                                          "onnxruntime", "--engines", str(engines),
                                          "--worker-memory", "1000"])
    assert res.exit_code == 1
    assert "cannot start even one worker: each worker needs 1 CPU, 0 GPU and 1000.0 GB" \
        in res.stderr and "limited by memory" in res.stderr
    assert not out.exists() and not ResultStore(out).parts_dir.exists()


class CrashingScorer(CoverScorer):
    """Kills its own process on a file named ``crash*`` (what a decoder crash does)."""

    def score_one(self, path):
        if Path(path).name.startswith("crash"):
            os._exit(1)
        return super().score_one(path)


def _fail_after(seconds: int):
    def handler(signum, frame):
        raise TimeoutError(f"cover-batch still running after {seconds} s")
    signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)


def test_a_worker_that_dies_costs_one_error_row_not_a_hang(tmp_path, engines, clips, local_ray):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    good = sorted(str(p) for p in clips.glob("*.mp4"))
    crash = tmp_path / "crash.mp4"
    shutil.copy(good[0], crash)
    out, notes = tmp_path / "res.parquet", []
    _fail_after(300)  # Ray Data's default retries a dead worker's batch forever
    try:
        summary = run_batch(good + [str(crash)], out, {"engines": str(engines)},
                            BatchSettings(workers=2, batch_size=3, scorer_class=CrashingScorer),
                            log=notes.append)
    finally:
        signal.alarm(0)
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    assert sorted(rows) == sorted(good + [str(crash)])  # one row each, none twice
    assert rows[str(crash)]["error"] == f"{crash}: the worker process died while scoring this " \
        "file (a crash in decoding or inference, or out of memory)"
    assert all(rows[p]["error"] is None for p in good)  # its batch-mates scored again, alone
    assert (summary.scored, summary.failed) == (len(good), 1)
    assert any("scoring its" in n and "one at a time" in n for n in notes)


_STOP_SCRIPT = """
import json, os, ray
from cover_engine.runtime.batch.driver import connect_ray, stop_local_ray
assert connect_ray(ray, None, print)   # started here
node = ray._private.worker._global_node
pids = {kind: [i.process.pid for i in infos] for kind, infos in node.all_processes.items()}
stop_local_ray(ray)
print(json.dumps({"pids": pids, "initialized": ray.is_initialized()}))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_stopping_the_local_ray_stops_its_monitor_and_every_other_process():
    res = subprocess.run([sys.executable, "-c", _STOP_SCRIPT], capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["initialized"] is False
    assert report["pids"].get("monitor"), "Ray no longer lists its monitor where we look"
    left = [(kind, pid) for kind, pids in report["pids"].items() for pid in pids if _alive(pid)]
    assert not left


def test_the_monitor_is_killed_before_ray_shuts_down():
    calls = []

    class Process:
        def kill(self):
            calls.append("kill monitor")

    class Info:
        process = Process()

    class Ray:  # the shape of the ray module that stop_local_ray reads
        class _private:
            class worker:
                class _global_node:
                    all_processes = {"monitor": [Info()], "raylet": []}

        @staticmethod
        def shutdown():
            calls.append("shutdown")

    from cover_engine.runtime.batch.driver import stop_local_ray

    stop_local_ray(Ray)
    assert calls == ["kill monitor", "shutdown"]
    Ray._private.worker._global_node = None  # a Ray that keeps no such record: just shutdown
    calls.clear()
    stop_local_ray(Ray)
    assert calls == ["shutdown"]
