"""cover-bench: timing primitives, the FLOP formula, the stage-by-stage loader, and a small CPU run
whose report structure is checked (never its speed)."""
from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cover_engine.bench import report as rep
from cover_engine.bench.clips import bench_clip
from cover_engine.bench.measure import timed_views
from cover_engine.runtime.cli.bench import main
from cover_engine.bench.clips import write_clip
from cover_engine.bench.stages import (Stats, Timer, module_sections, summarise,
                                       vit_flops_per_frame)
from cover_engine.export.config import ModelConfig
from cover_engine.runtime.constants import views_for_inputs
from cover_engine.runtime.views.assemble import load_views


class FakeClock:
    """Marks are 0, 1, 2, ... so every interval's length is known in advance."""

    name = "fake"

    def __init__(self):
        self._ticks = itertools.count()

    def mark(self):
        return next(self._ticks)

    def elapsed(self, start, end):
        return float(end - start)


@pytest.fixture(scope="module")
def small_config(vectors_dir) -> Path:
    return vectors_dir / "model" / "config.json"


def test_stats_use_linear_percentiles():
    s = Stats.of([float(v) for v in range(1, 101)])
    assert (s.min, s.p50, s.p95, s.mean, s.n) == (1.0, 50.5, 95.05, 50.5, 100)
    assert s.to_ms()["p95_ms"] == pytest.approx(95050.0)
    with pytest.raises(ValueError):
        Stats.of([])


def test_timer_sums_a_stage_seen_twice_in_a_run():
    timer = Timer(FakeClock())
    with timer.section("a"):        # marks 0, 1
        pass
    timer.start("b")                # 2
    with timer.section("a"):        # 3, 4
        pass
    timer.stop("b")                 # 5
    assert timer.end_run() == {"a": 2.0, "b": 3.0}
    timer.start("a")
    with pytest.raises(RuntimeError, match="open sections"):
        timer.end_run()
    with pytest.raises(RuntimeError, match="without a matching start"):
        Timer(FakeClock()).stop("x")
    timer.discard()
    assert timer.runs == []
    runs = [{"a": 1.0, "b": 4.0}, {"a": 3.0}]
    stats = summarise(runs)
    assert list(stats) == ["a", "b"] and stats["a"].p50 == 2.0 and stats["b"].n == 1


def test_module_sections_time_the_real_forward_and_leave_no_hooks():
    first, second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(first, torch.nn.ReLU(), second)
    timer = Timer(FakeClock())
    with module_sections(timer, {"one": [first], "both": [first, second]}):
        model(torch.zeros(1, 4))
    run = timer.end_run()
    # Pre-hooks run in registration order ("one" then "both" on `first`), so the marks are
    # one:0, both:1 | one:2, both:3 | both:4 | both:5.
    assert run == {"one": 2.0, "both": 3.0}
    assert not first._forward_hooks and not first._forward_pre_hooks
    assert not second._forward_hooks and not second._forward_pre_hooks


def test_vit_flops_formula_matches_torch_flop_counter(small_config):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from cover_engine.export.clip_vit import ClipVisionTower

    cfg = ModelConfig.from_json(small_config)
    sem = cfg.semantic
    _, _, frames, h, w = cfg.inputs["semantic"]
    torch.manual_seed(0)
    tower = ClipVisionTower(sem).eval()  # COVER's semantic_backbone
    counter = FlopCounterMode(display=False)
    # The math SDPA kernel is plain matmuls, which the counter sees; the fused CPU kernel is not
    # in its registry.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        tower(torch.zeros(frames, 3, h, w))
    expected = frames * vit_flops_per_frame(sem.width, sem.layers, sem.patch_size,
                                            sem.output_dim, h, w)
    assert counter.get_total_flops() == expected


def test_vit_flops_at_official_size_is_the_specs_figure():
    sem = ModelConfig.official().semantic
    per_frame = vit_flops_per_frame(sem.width, sem.layers, sem.patch_size, sem.output_dim, 512, 512)
    assert per_frame == pytest.approx(0.95e12, rel=5e-3)  # docs/cover-behaviour.md: 0.95 TFLOP per frame


def test_timed_views_equal_load_views(tmp_path, small_config):
    specs = views_for_inputs(ModelConfig.from_json(small_config).inputs)
    clip = write_clip(tmp_path / "c.mp4", 160, 96, 11, codec="h264")  # < 224: upsampled fragments
    reference, info = load_views(clip, specs)
    timer = Timer()
    views = timed_views(clip, specs, info.num_frames, timer)
    run = timer.end_run()
    assert set(views) == set(reference)
    for name in reference:
        assert views[name].dtype == np.float32
        np.testing.assert_array_equal(views[name], reference[name])
    assert set(run) == {"decode", "preprocess:semantic", "preprocess:technical",
                        "preprocess:aesthetic"}


def test_bench_clip_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("COVER_HOME", str(tmp_path))
    path, generated = bench_clip("64x48", 3, "hevc", log=lambda m: None)
    assert generated and path.is_file()
    assert path.parent == tmp_path / "bench-clips"
    again, generated = bench_clip("64x48", 3, "hevc", log=lambda m: None)
    assert again == path and not generated
    with pytest.raises(Exception, match="even"):
        bench_clip("65x48", 3, "h264", log=lambda m: None)


def test_speedups_and_table_from_a_report():
    def row(name, inference, e2e):
        stages = {s: {"min_ms": 1.0, "p50_ms": 1.0, "p95_ms": 1.0, "mean_ms": 1.0, "n": 1}
                  for s in rep.STACKED}
        stages["inference"] = {"min_ms": inference, "p50_ms": inference, "p95_ms": inference,
                               "mean_ms": inference, "n": 1}
        stages["end-to-end"] = {"min_ms": e2e, "p50_ms": e2e, "p95_ms": e2e, "mean_ms": e2e, "n": 1}
        return {"name": name, "status": "ok", "reason": "", "stages": stages,
                "throughput": {"clips_per_s": 1000 / e2e}, "efficiency": {},
                "memory": {"host_peak_bytes": 2**30, "gpu_peak_bytes": None}}

    report = {
        "settings": {"config": "official", "weights": "random", "runs": 1, "warmup": 0,
                     "batch": 1, "concurrency": 1, "device": "cpu"},
        "clip": {"width": 64, "height": 48, "frames": 3, "codec": "h264", "path": "x.mp4"},
        "backends": [row("torch-fp32", 100.0, 200.0), row("onnxruntime", 25.0, 125.0),
                     {"name": "tensorrt", "status": "skipped", "reason": "no GPU"}],
    }
    rep.add_speedups(report)
    assert report["backends"][0]["speedup"] == {"inference": 1.0, "end-to-end": 1.0}
    assert report["backends"][1]["speedup"] == {"inference": 4.0, "end-to-end": 1.6}
    table = rep.format_table(report)
    assert "4.00x" in table and "1.60x" in table and "tensorrt: skipped: no GPU" in table


def _run_bench(tmp_path, monkeypatch, small_config, backends: str, *extra: str):
    monkeypatch.setenv("COVER_HOME", str(tmp_path / "home"))
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(main, [
        "--config", str(small_config), "--resolution", "128x72", "--frames", "8",
        "--runs", "2", "--warmup", "0", "--device", "cpu", "--backends", backends,
        "--json", str(out_json), "--plot", str(out_png), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out_json.read_text()), out_png


def _check_stats(stats: dict, runs: int) -> None:
    assert set(stats) == {"min_ms", "p50_ms", "p95_ms", "mean_ms", "n"}
    assert stats["n"] == runs
    assert 0 <= stats["min_ms"] <= stats["p50_ms"] <= stats["p95_ms"]


def test_smoke_cpu_report_structure(tmp_path, monkeypatch, small_config):
    """The CI smoke run: a tiny clip and model on the CPU; every part of the report is there."""
    output, report, png = _run_bench(tmp_path, monkeypatch, small_config,
                                     "torch-fp32,torch-fp16,tensorrt",
                                     "--batch", "2", "--concurrency", "2")
    assert {"tool", "date", "command", "machine", "versions", "settings", "clip", "model",
            "reference_matmul", "backends"} <= set(report)
    assert report["machine"]["logical_cpus"] >= 1 and report["versions"]["torch"]
    assert report["settings"]["batch"] == 2 and report["settings"]["device"] == "cpu"
    assert report["clip"]["width"] == 128 and report["clip"]["frames"] == 8
    assert report["clip"]["generated"] is True
    assert report["command"].startswith("cover-bench --config ")
    assert report["reference_matmul"]["tflops"] > 0

    rows = {b["name"]: b for b in report["backends"]}
    assert list(rows) == ["torch-fp32", "torch-fp16", "tensorrt"]
    for name in ("torch-fp16", "tensorrt"):
        assert rows[name]["status"] == "skipped" and "device is cpu" in rows[name]["reason"]
        assert f"{name}: skipped" in output

    base = rows["torch-fp32"]
    assert base["status"] == "ok", base["reason"]
    assert list(base["stages"]) == list(rep.STAGE_ORDER)
    for stats in base["stages"].values():
        _check_stats(stats, runs=2)
    assert base["speedup"] == {"inference": 1.0, "end-to-end": 1.0}
    assert base["throughput"]["clips"] == 2 * 2 * 2 and base["throughput"]["clips_per_s"] > 0
    assert base["efficiency"]["semantic_tflops"] > 0 and base["efficiency"]["ratio_to_matmul"] > 0
    assert base["memory"]["host_peak_bytes"] > 0 and base["memory"]["gpu_peak_bytes"] is None
    assert base["clock"] == {"host": "perf_counter", "model_stages": "perf_counter"}
    flops = report["model"]["semantic_flops_per_clip"]
    semantic_s = base["stages"]["semantic"]["p50_ms"] / 1e3
    assert base["efficiency"]["semantic_tflops"] == pytest.approx(flops / semantic_s / 1e12)
    ref = report["reference_matmul"]
    assert ref["tflops"] == max(ref["tflops_before"], ref["tflops_after"])
    assert base["efficiency"]["ratio_to_matmul"] == pytest.approx(
        base["efficiency"]["semantic_tflops"] / ref["tflops"])

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "torch-fp32" in output and "end-to-end" in output


@pytest.mark.slow
def test_onnxruntime_row_against_the_baseline(tmp_path, monkeypatch, small_config):
    """Exports the small model to ONNX (about half a minute here), then both rows side by side."""
    _, report, _ = _run_bench(tmp_path, monkeypatch, small_config, "torch-fp32,onnxruntime")
    ort = report["backends"][1]
    assert ort["name"] == "onnxruntime" and ort["status"] == "ok", ort["reason"]
    assert {"semantic", "technical", "aesthetic", "glue"} <= set(ort["stages"])
    assert "gates+heads" not in ort["stages"]  # inside each branch graph
    assert set(ort["speedup"]) == {"inference", "end-to-end"}
    for stats in ort["stages"].values():
        _check_stats(stats, runs=2)


@pytest.mark.gpu
def test_torch_rows_on_cuda_use_cuda_events(tmp_path, monkeypatch, small_config):
    _, report, _ = _run_bench(tmp_path, monkeypatch, small_config, "torch-fp32,torch-fp16",
                              "--device", "cuda")
    for row in report["backends"]:
        assert row["status"] == "ok", row["reason"]
        assert row["clock"]["model_stages"] == "cuda-events"
        assert row["memory"]["gpu_peak_bytes"] > 0
    assert report["reference_matmul"]["dtype"] == "float16"


def test_torch_gpu_rows_are_listed_and_skip_on_a_cpu(tmp_path, small_config):
    """The GPU rows of the torch backend (bf16, torch.compile, CUDA graphs) are cover-bench
    rows; on a CPU each is skipped with the reason, and the compiled and graph rows time
    inference and end-to-end only (hooks would change what is measured)."""
    from cover_engine.bench.probes import (BACKENDS, TORCH_ROWS, Context, TorchProbe,
                                           make_probe, parse_backends, skip_reason)
    from cover_engine.bench.stages import Timer
    from cover_engine.export.config import ModelConfig

    assert {"torch-bf16", "torch-fp16-compile", "torch-fp16-graphs"} <= set(BACKENDS)
    assert parse_backends("torch-fp16-graphs,torch-fp32") == ["torch-fp32", "torch-fp16-graphs"]
    ctx = Context(config=ModelConfig.from_json(small_config), device="cpu", batch=1,
                  weights=None, clip_weights=None, engines=None, threads=None,
                  workdir=tmp_path, log=lambda m: None)
    for name in TORCH_ROWS:
        reason = skip_reason(name, ctx)
        assert (reason is None) == (name == "torch-fp32"), name
        if reason:
            assert "CUDA device" in reason and "device is cpu" in reason
    compiled = make_probe("torch-fp16-compile", ctx)  # built, never run here
    assert isinstance(compiled, TorchProbe) and compiled.backend.name == "torch-fp16-compile"
    assert not compiled.stages_inside_run
    assert isinstance(compiled.sections(Timer()), contextlib.nullcontext)
    eager = make_probe("torch-fp32", ctx)
    assert eager.stages_inside_run and eager.backend.name == "torch"


@pytest.mark.gpu
def test_torch_gpu_rows_run_on_cuda(tmp_path, monkeypatch, small_config):
    _, report, _ = _run_bench(tmp_path, monkeypatch, small_config,
                              "torch-fp32,torch-bf16,torch-fp16-compile,torch-fp16-graphs",
                              "--device", "cuda")
    rows = {row["name"]: row for row in report["backends"]}
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["reason"])
        assert row["stages"]["inference"]["p50_ms"] > 0
    assert "semantic" in rows["torch-bf16"]["stages"]
    assert "semantic" not in rows["torch-fp16-graphs"]["stages"]


@pytest.mark.parametrize("args, message", [
    (["--input", "missing.mp4"], "missing.mp4: no such file"),
    (["--backends", "torch-fp32,tpu"], "unknown tpu"),
    (["--resolution", "4kk"], "resolution '4kk'"),
])
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, small_config, args, message):
    monkeypatch.setenv("COVER_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--config", str(small_config), "--device", "cpu", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
