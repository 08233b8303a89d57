"""``auto`` on a CPU: torch or ONNX Runtime, chosen by a measured probe cached per machine."""
from __future__ import annotations

import json

import pytest

from cover_engine.export import cpu_probe
from cover_engine.export.config import ModelConfig
from cover_engine.runtime import scoring
from cover_engine.runtime.errors import WeightsError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COVER_HOME", str(tmp_path))
    return tmp_path


def _fake(torch_s, ort_s, calls):
    def probe(cfg):
        calls.append(cfg)
        return {"torch_s": torch_s, "onnxruntime_s": ort_s}
    return probe


def test_faster_backend_is_chosen_once_and_cached(home):
    calls, notes = [], []
    assert cpu_probe.cpu_backend(None, log=notes.append, probe=_fake(1.0, 2.0, calls)) == "torch"
    assert len(calls) == 1 and "auto runs torch" in notes[-1]
    record = json.loads(next((home / "probes").glob("cpu-backend-*.json")).read_text())
    assert record["choice"] == "torch" and record["key"]["block"] == [20, 1297, 1024, 16]

    def must_not_run(cfg):
        raise AssertionError("the cached answer should be used")
    assert cpu_probe.cpu_backend(None, log=notes.append, probe=must_not_run) == "torch"

    calls.clear()  # another model shape is another question
    smaller = ModelConfig.official().to_dict()
    smaller["inputs"]["semantic"] = [1, 3, 8, 224, 224]
    assert cpu_probe.cpu_backend(ModelConfig.from_json(smaller), log=notes.append,
                                 probe=_fake(2.0, 1.0, calls)) == "onnxruntime"
    assert len(calls) == 1


def test_a_near_tie_goes_to_onnxruntime(home):
    near = 0.99  # torch 1% faster: within the margin
    assert cpu_probe.cpu_backend(None, log=lambda m: None,
                                 probe=_fake(near, 1.0, [])) == "onnxruntime"


def test_unreadable_cache_is_measured_again(home):
    calls = []
    cpu_probe.cpu_backend(None, log=lambda m: None, probe=_fake(1.0, 2.0, calls))
    path = next((home / "probes").glob("*.json"))
    path.write_text("{not json")
    assert cpu_probe.cpu_backend(None, log=lambda m: None, probe=_fake(3.0, 1.0, calls)) == \
        "onnxruntime"
    assert len(calls) == 2


def test_real_probe_times_both_backends_on_the_small_model(vectors_dir):
    cfg = ModelConfig.from_json(vectors_dir / "model" / "config.json")
    times = cpu_probe.run_cpu_probe(cfg, reps=1)
    assert times["torch_s"] > 0 and times["onnxruntime_s"] > 0


def test_auto_backend_asks_only_for_auto_on_a_cpu_without_engines(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_probe, "cpu_backend", lambda config=None, log=print: "torch")
    assert scoring.auto_backend("auto", random_weights=True) == "torch"
    assert scoring.auto_backend("auto", engines=tmp_path) == "auto"      # engines handed over
    assert scoring.auto_backend("auto", device="cuda") == "auto"         # a GPU: TensorRT first
    assert scoring.auto_backend("onnxruntime") == "onnxruntime"          # asked for by name
    monkeypatch.setattr(cpu_probe, "cpu_backend", lambda config=None, log=print: "onnxruntime")
    assert scoring.auto_backend("auto", random_weights=True) == "auto"


def test_missing_weights_fail_before_the_probe_runs(home, monkeypatch):
    calls = []
    monkeypatch.delenv("COVER_WEIGHTS", raising=False)
    monkeypatch.setattr(cpu_probe, "cpu_backend",
                        lambda config=None, log=print: calls.append(config) or "torch")
    with pytest.raises(WeightsError, match="COVER.pth not found"):
        scoring.make_scorer("auto", log=lambda msg: None)
    assert calls == []                      # no minute of probing before the error
    cached = scoring.cached_engine_dir()    # an export already there needs no weights
    cached.mkdir(parents=True)
    (cached / "manifest.json").write_text("{}")
    assert scoring.auto_backend("auto") == "torch" and calls == [None]


def test_a_cached_answer_needs_neither_torch_nor_onnxruntime(home):
    """Every cover-run and cover-batch start reads the cache: importing torch for it costs a
    second."""
    import os
    import subprocess
    import sys

    cpu_probe.cpu_backend(None, log=lambda m: None, probe=_fake(1.0, 2.0, []))
    code = ("import sys; from cover_engine.export.cpu_probe import cpu_backend; "
            "assert cpu_backend(None, log=print, probe=None) == 'torch'; "
            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "COVER_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
