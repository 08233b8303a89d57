"""cover-batch without a cluster: fingerprints, the durable parts and the final file, resume
planning, the worker limit, and the documented Parquet schema."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cover_engine.runtime.batch.fingerprint import (SAMPLE_BLOCK, SAMPLE_BLOCKS, fingerprint,
                                                    sample_offsets)
from cover_engine.runtime.batch.resources import (GB, Node, WorkerNeeds, fit_workers,
                                                  plan_workers, worker_memory)
from cover_engine.runtime.batch.schema import RESULT_COLUMNS
from cover_engine.runtime.errors import CoverError, InputError

REPO = Path(__file__).resolve().parent.parent.parent


# --- fingerprints -------------------------------------------------------------------------------

def test_sample_offsets_cover_the_file_evenly():
    assert sample_offsets(0) == []
    assert sample_offsets(SAMPLE_BLOCKS * SAMPLE_BLOCK) == [0]          # small: hashed whole
    size = 10_000_000
    offs = sample_offsets(size)
    assert len(offs) == SAMPLE_BLOCKS and offs[0] == 0 and offs[-1] == size - SAMPLE_BLOCK
    gaps = {b - a for a, b in zip(offs, offs[1:])}
    assert max(gaps) - min(gaps) <= 1


def test_fingerprint_sees_content_not_name_or_time(tmp_path):
    data = bytearray(os.urandom(3_000_000))
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(data)
    b.write_bytes(data)
    os.utime(b, (1, 1))
    assert fingerprint(a) == fingerprint(b)                  # same bytes: same print
    assert fingerprint(a).startswith(f"sampled:{len(data)}:")
    assert fingerprint(a, "full") != fingerprint(a)          # kinds never compare equal
    edited = bytearray(data)
    edited[sample_offsets(len(data))[5] + 3] ^= 0xFF         # same size, a sampled byte
    b.write_bytes(edited)
    assert fingerprint(b) != fingerprint(a)
    b.write_bytes(data + b"x")                               # appended
    assert fingerprint(b) != fingerprint(a)
    b.write_bytes(data[:-1])                                 # truncated
    assert fingerprint(b) != fingerprint(a)
    small = tmp_path / "small.png"
    small.write_bytes(b"\x00" * 1000)
    before = fingerprint(small)
    small.write_bytes(b"\x00" * 999 + b"\x01")               # small files: every byte counts
    assert fingerprint(small) != before
    with pytest.raises(OSError):
        fingerprint(tmp_path / "gone.mp4")


# --- parts, final file, resume plan --------------------------------------------------------------

pa = pytest.importorskip("pyarrow", reason="the ray extra (pyarrow) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from cover_engine.runtime.batch.schema import result_schema, rows_to_table  # noqa: E402
from cover_engine.runtime.batch.store import ResultStore, plan  # noqa: E402


def _row(path, overall=1.0, error=None, fp="sampled:1:00"):
    if error:
        return {"path": path, "fingerprint": fp, "backend": "onnxruntime", "colour": "decord",
                "seconds": 0.1, "error": error}
    return {"path": path, "fingerprint": fp, "semantic": 0.5, "technical": 0.25,
            "aesthetic": overall - 0.75, "overall": overall, "frames": 30,
            "resolution": "64x48", "backend": "onnxruntime", "colour": "decord", "seconds": 0.1}


def test_parts_survive_a_torn_tail_and_finalize_is_whole(tmp_path):
    out = tmp_path / "res.parquet"
    store = ResultStore(out)
    with store.lock():
        w = store.writer()
        w.write(rows_to_table([_row("/a"), _row("/b")]))
        w.write(rows_to_table([_row("/c", error="/c: broken")]))
        part = w._file.name
        w._file.flush()
        # a kill mid-write: the last message is torn (no close, bytes cut)
        size = os.path.getsize(part)
        w.write(rows_to_table([_row("/d")]))
        os.truncate(part, size + 40)
        loaded = store.load()
    assert loaded.table.column("path").to_pylist() == ["/a", "/b", "/c"]
    assert len(loaded.torn) == 1 and "kept 3 rows" in loaded.torn[0]
    assert loaded.done()["/c"] == ("sampled:1:00", True)

    with store.lock():
        w = store.writer()                                      # a second run: new part file
        w.write(rows_to_table([_row("/b", overall=2.0)]))       # rescored: newest wins
        w.close()
        assert len(store.part_files()) == 2
        store.finalize(store.load().table)
    assert not store.parts_dir.exists()                         # removed by the lock holder
    table = pq.read_table(out)
    assert table.schema.equals(result_schema())
    assert table.column("path").to_pylist() == ["/a", "/b", "/c"]
    assert table.column("overall").to_pylist()[1] == 2.0
    assert table.column("error").to_pylist() == [None, None, "/c: broken"]
    assert not list(tmp_path.glob(".res.parquet.tmp-*"))

    again = ResultStore(out).load()                             # the final file is read back
    assert again.table.equals(table)


def test_store_refuses_foreign_files_and_a_second_writer(tmp_path):
    out = tmp_path / "res.parquet"
    pq.write_table(pa.table({"name": ["x"]}), out)
    with pytest.raises(InputError, match="not a cover-batch results file"):
        ResultStore(out).load()
    out.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        ResultStore(out).load()
    other = ResultStore(tmp_path / "other.parquet")
    with other.lock():
        with pytest.raises(CoverError, match="another cover-batch run"):
            with ResultStore(tmp_path / "other.parquet").lock():
                pass
        assert other.parts_dir.is_dir()          # the refused run leaves the holder's folder
    assert not other.parts_dir.exists()          # the holder removes it, empty, when done


def test_plan_skips_only_unchanged_content(tmp_path):
    same, changed, failed, gone, new = (tmp_path / n for n in ("s", "c", "f", "g", "n"))
    for p in (same, changed, failed, new):
        p.write_bytes(os.urandom(1000))
    done = {str(same): (fingerprint(same), False), str(changed): (fingerprint(changed), False),
            str(failed): (fingerprint(failed), True), str(gone): (None, True)}
    changed.write_bytes(os.urandom(1000))
    inputs = [str(p) for p in (same, changed, failed, gone, new)]
    todo, skipped = plan(inputs, done)
    assert todo == [str(changed), str(new)] and skipped == 3
    todo, skipped = plan(inputs, done, retry_errors=True)
    assert todo == [str(changed), str(failed), str(gone), str(new)] and skipped == 1
    gone.write_bytes(b"now here")                              # appeared since: scored
    assert str(gone) in plan(inputs, done)[0]


# --- how many workers fit --------------------------------------------------------------------------

def test_workers_limited_by_memory_with_the_reason():
    nodes = [Node("10.0.0.1", cpus=16, gpus=0, memory=20 * GB),
             Node("10.0.0.2", cpus=4, gpus=0, memory=64 * GB)]
    needs = WorkerNeeds(cpus=1, gpus=0, memory=6 * GB)
    fits = fit_workers(nodes, needs)
    assert [(n, why) for _, n, why in fits] == [(3, "memory"), (4, "CPUs")]
    assert plan_workers(nodes, needs, None, "test") == 7
    assert plan_workers(nodes, needs, 5, "test") == 5
    with pytest.raises(CoverError) as err:
        plan_workers(nodes, needs, 8, "measured")
    msg = str(err.value)
    assert "refusing to start 8 workers" in msg and "at most 7" in msg and "6.0 GB" in msg
    assert "10.0.0.1: 3" in msg and "limited by memory" in msg
    with pytest.raises(CoverError, match="cannot start even one worker"):
        plan_workers([Node("tiny", cpus=8, gpus=0, memory=2 * GB)], needs, None, "x")
    gpu = WorkerNeeds(cpus=1, gpus=0.5, memory=1 * GB)
    assert plan_workers([Node("g", cpus=8, gpus=2, memory=64 * GB)], gpu, None, "x") == 4


def test_worker_memory_figures():
    from cover_engine.runtime.constants import WORKER_MEMORY

    official, why = worker_memory("onnxruntime", official=True, graph_bytes=1_600_000_000)
    assert official == WORKER_MEMORY["official"]["cpu"]["onnxruntime"] and "measured" in why
    torch_mem, why = worker_memory("torch", official=True, graph_bytes=1_150_000_000)
    assert torch_mem == WORKER_MEMORY["official"]["cpu"]["torch"] and "measured" in why
    small, why = worker_memory("onnxruntime", official=False, graph_bytes=7_000_000)
    assert small < 1 * GB and "estimated" in why
    bigger, _ = worker_memory("onnxruntime", official=False, graph_bytes=700_000_000)
    assert bigger > small + 2 * GB                    # grows with the model (3.5 x 0.7 GB)
    gpu, why = worker_memory("tensorrt", official=True, graph_bytes=800_000_000, device="cuda")
    assert "estimated" in why                         # nothing measured on a GPU host yet


# --- the documented schema ------------------------------------------------------------------------

def test_readme_documents_the_parquet_schema():
    text = (REPO / "README.md").read_text()
    section = text.split("### Output schema", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (yes|no) \|", section, flags=re.M)
    assert rows == [(c.name, c.type, "yes" if c.nullable else "no") for c in RESULT_COLUMNS]
    schema = result_schema()
    assert [(f.name, str(f.type), f.nullable) for f in schema] == \
        [(c.name, {"float64": "double"}.get(c.type, c.type), c.nullable) for c in RESULT_COLUMNS]
