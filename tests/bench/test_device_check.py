"""The one-call device check parses and runs here: every GPU step skips with its reason, the
CPU-side work (clips, probing, the interlaced refusal) is done, and both reports are written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from cover_engine.bench import device_check as dc
from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.gpu import nvdec

REPO = REPO_ROOT


@pytest.mark.skipif(gpu.gpu_available(), reason="a GPU is present: the check runs for real")
def test_without_a_gpu_every_gpu_step_skips_with_a_reason(tmp_path):
    steps, report = dc.run_check(tmp_path, skip=("bench",), log=lambda m: None)
    by_name = {s.name: s for s in steps}
    assert by_name["environment"].status == "ok"
    gpu_steps = ["decoder caps", "clip:h264-bframes", "pytest -m gpu", "compute-sanitizer",
                 "torch fp32/fp16/bf16 vs CPU"]
    for name in gpu_steps:
        assert by_name[name].status == "skipped" and by_name[name].reason, name
    interlaced = by_name["clip:h264-interlaced"]
    assert interlaced.status == "ok" and interlaced.details["path"].startswith("cpu (interlaced")
    assert not any(s.status == "fail" for s in steps)
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert [s["name"] for s in saved["steps"]] == [s.name for s in steps]
    text = (tmp_path / "summary.txt").read_text()
    assert "0 failed" in text and "decoded by cpu (interlaced" in text
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == sorted(
        f"{n}.{spec.container}" for n, spec in dc.CLIPS.items() if n in
        {s.name[5:] for s in steps if s.name.startswith("clip:") and "encoder" not in s.reason})


def test_a_failing_step_is_reported_and_the_others_run(tmp_path):
    check = dc.Check(tmp_path, log=lambda m: None)
    check.run("broken", lambda: 1 / 0)
    check.run("skipped", lambda: (_ for _ in ()).throw(dc.Skip("no GPU")))
    check.run("fine", lambda: {"value": 3})
    check.run("wrong", lambda: {"_failed": True, "_why": "planes differ"})
    assert [(s.status, s.reason) for s in check.steps] == [
        ("fail", "ZeroDivisionError: division by zero"), ("skipped", "no GPU"), ("ok", ""),
        ("fail", "planes differ")]
    assert check.steps[2].details == {"value": 3}


def test_wheels_step_skips_without_wheels(tmp_path):
    with pytest.raises(dc.Skip):
        dc.install_wheels(tmp_path / "absent")


def test_the_shell_wrapper_passes_its_arguments():
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--help"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    assert "--wheels" in done.stdout and "--out" in done.stdout


def test_the_script_runs_as_a_file():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"),
                           "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_gpu_branch_of_a_clip_check_runs_on_fakes(tmp_path, monkeypatch):
    """What the check does on a GPU, with the PyNvVideoCodec and CUDA fakes and the kernels'
    emulation: NVDEC takes the clip, its planes are PyAV's and every view (both colour
    conversions) is the CPU's bit for bit; a substituted frame is reported as a failure."""
    from dataclasses import replace

    from helpers.gpu_fakes import EmulatedKernels, fake_pynvvideocodec, install_fake_gpu

    from cover_engine.runtime.constants import OFFICIAL_VIEWS
    from cover_engine.runtime.gpu import pipeline

    install_fake_gpu(monkeypatch)
    monkeypatch.setattr(gpu, "gpu_available", lambda: True)
    module = fake_pynvvideocodec()
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
    monkeypatch.setattr(nvdec, "_pynvvideocodec", lambda: (module, ""))
    monkeypatch.setattr(pipeline, "ViewKernels", EmulatedKernels)
    small = {"semantic": replace(OFFICIAL_VIEWS["semantic"], size_h=32, size_w=32),
             "technical": replace(OFFICIAL_VIEWS["technical"], clip_len=8, t_frag=4, aligned=4,
                                  fragments_h=2, fragments_w=2),
             "aesthetic": replace(OFFICIAL_VIEWS["aesthetic"], clip_len=8, t_frag=4,
                                  size_h=32, size_w=32)}
    clips = dc.make_clips(tmp_path, ["h264-bframes", "vp9-odd"])
    for name, path in clips.items():
        details = dc.check_clip(name, path, specs=small)
        assert details["path"] == "nvdec", details
        assert details["planes_different"] == 0 and details["planes_compared"] > 0
        assert len(details["views"]) == 6 and all(v["bit_identical"]
                                                  for v in details["views"].values()), details
        assert "_failed" not in details
