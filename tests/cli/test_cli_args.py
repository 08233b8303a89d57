"""Hostile command lines through the real entry points: every case is refused in ONE line that
names the argument or path and the cause, with the right exit code and no traceback, before any
work (no scorer built, no export traced, nothing downloaded).

Exit codes: 2 for a bad command line (click's usage error), 1 for a refusal by the engine.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cover_engine.runtime.cli import eval as cli_eval
from cover_engine.runtime.cli import export as cli_export
from cover_engine.runtime.cli import fetch as cli_fetch
from cover_engine.runtime.cli import run as cli_run
from cover_engine.runtime.constants import COVER_HOME_ENV, MAX_CLIPS, MAX_SEED
from cover_engine.runtime.engines import ort_runner

from helpers import REPO_ROOT
from helpers.toy_engines import make_engine_folder

REPO = REPO_ROOT


def one_line(result, code: int) -> str:
    """The single line a refused command printed (stdout and stderr together)."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1, (result.exit_code, result.output)
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture()
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not scored: every case here fails before")
    return path


@pytest.fixture()
def no_scorer(monkeypatch):
    """Fail the test if a command gets as far as building a scorer."""
    def refuse(*args, **kwargs):
        raise AssertionError("a scorer was built for a command line that should be refused")
    monkeypatch.setattr("cover_engine.runtime.scoring.make_scorer", refuse)
    monkeypatch.setattr(cli_eval, "build_scorer", refuse)


@pytest.fixture()
def loop(tmp_path) -> Path:
    """``loop.mp4`` -> ``loop2`` -> ``loop.mp4``."""
    os.symlink(tmp_path / "loop2", tmp_path / "loop.mp4")
    os.symlink(tmp_path / "loop.mp4", tmp_path / "loop2")
    return tmp_path / "loop.mp4"


def labels(tmp_path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("clip.mp4,-1,-1,3.5\n")
    return path


# ----------------------------------------------------------------------------- parse time

@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295"),
    (["--seed", str(MAX_SEED + 1)], "Invalid value for '--seed'"),
    (["--seed", "1.5"], "Invalid value for '--seed': '1.5' is not a valid integer"),
    (["--clips", "0"], "Invalid value for '--clips': 0 is not in the range 1<=x<=64"),
    (["--clips", str(MAX_CLIPS + 1)], "Invalid value for '--clips'"),
    (["--clips", "-3"], "Invalid value for '--clips'"),
    (["--backend", "tensorrt", "--device", "cpu"],
     "Invalid value for '--device': --backend tensorrt runs on an NVIDIA GPU"),
    (["--backend", "onnxruntime", "--precision", "fp16"],
     "Invalid value for '--precision': fp16 applies to --backend torch"),
    (["--precision", "bf16"], "Invalid value for '--precision': bf16 applies to --backend torch"),
])
def test_bad_scoring_options_are_refused_at_parse_time(clip, tmp_path, no_scorer, args, needle):
    for main, head in ((cli_run.main, [str(clip)]),
                       (cli_eval.main, ["--labels", str(labels(tmp_path)), "--root", str(tmp_path)])):
        line = one_line(CliRunner().invoke(main, head + args), 2)
        assert needle in line and line.endswith(" -h)")


@pytest.mark.parametrize("backend", ["auto", "torch", "onnxruntime", "tensorrt"])
@pytest.mark.parametrize("device", ["foo", "gpu", "cuda:x", "cuda:-1", "cuda1", "CPU:0", ""])
def test_bad_device_is_refused_for_every_backend(clip, no_scorer, backend, device):
    line = one_line(CliRunner().invoke(cli_run.main, [str(clip), "--backend", backend,
                                                      "--device", device]), 2)
    assert f"Invalid value for '--device': {device!r} is not a device; use cpu, cuda or cuda:N" \
        in line


def test_bench_device_is_checked_too():
    from cover_engine.runtime.cli import bench as cli_bench

    line = one_line(CliRunner().invoke(cli_bench.main, ["--device", "tpu"]), 2)
    assert "'tpu' is not a device; use auto, cpu, cuda or cuda:N" in line


def test_good_devices_pass_the_parser(clip, monkeypatch):
    seen = []
    monkeypatch.setattr("cover_engine.runtime.scoring.make_scorer",
                        lambda *a, **k: seen.append(k["device"]) or (_ for _ in ()).throw(
                            SystemExit(0)))
    for device, want in (("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:0", "cuda:0"),
                         ("cuda:12", "cuda:12")):
        CliRunner().invoke(cli_run.main, [str(clip), "--device", device])
        assert seen[-1] == want


# ----------------------------------------------------------------------------- GPU asked for

def test_onnxruntime_without_the_cuda_provider_refuses_cuda(clip, tmp_path, monkeypatch):
    make_engine_folder(tmp_path / "eng")
    monkeypatch.setattr(ort_runner.ort, "get_available_providers",
                        lambda: ["CPUExecutionProvider"])
    line = one_line(CliRunner().invoke(cli_run.main, [
        str(clip), "--backend", "onnxruntime", "--engines", str(tmp_path / "eng"),
        "--device", "cuda"]), 1)
    assert "ONNX Runtime provider CUDAExecutionProvider is not available here" in line


def test_onnxruntime_never_falls_back_to_the_cpu_silently(clip, tmp_path, monkeypatch):
    """The provider is listed but cannot start (as with missing CUDA libraries): ONNX Runtime
    would quietly build a CPU session; the backend refuses instead."""
    make_engine_folder(tmp_path / "eng")
    monkeypatch.setattr(ort_runner.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real_session = ort_runner.ort.InferenceSession

    def cpu_only_session(path, sess_options=None, providers=None, **kwargs):
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"],
                            **kwargs)
    monkeypatch.setattr(ort_runner.ort, "InferenceSession", cpu_only_session)
    line = one_line(CliRunner().invoke(cli_run.main, [
        str(clip), "--backend", "onnxruntime", "--engines", str(tmp_path / "eng"),
        "--device", "cuda:0"]), 1)
    assert "semantic.onnx: ONNX Runtime could not start CUDAExecutionProvider (it would have " \
           "run on CPUExecutionProvider)" in line


def test_torch_backend_without_that_gpu_is_one_line(clip, vectors_dir):
    torch = pytest.importorskip("torch")
    device = f"cuda:{torch.cuda.device_count() + 3}" if torch.cuda.is_available() else "cuda"
    line = one_line(CliRunner().invoke(cli_run.main, [
        str(clip), "--backend", "torch", "--random-weights", "--device", device,
        "--config", str(vectors_dir / "model" / "config.json")]), 1)
    assert f"--device {device}" in line and "torch sees" in line


# ----------------------------------------------------------------------------- COVER_HOME

@pytest.fixture()
def unwritable(tmp_path) -> Path:
    """A folder this process cannot create files in (permission bits, or sysfs for root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys/cover-engine-test-home")  # sysfs: not even root can create it
    try:
        folder.mkdir()
    except OSError:
        yield folder
        return
    folder.rmdir()
    pytest.skip("no folder here refuses writes to this process")


def _home(monkeypatch, path: Path) -> None:
    monkeypatch.setenv(COVER_HOME_ENV, str(path))
    for env in ("COVER_WEIGHTS", "COVER_CLIP_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)


def test_cover_home_that_is_a_file(tmp_path, clip, monkeypatch):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    _home(monkeypatch, home)
    for main, args, code in (
            (cli_run.main, [str(clip), "--backend", "onnxruntime", "--random-weights"], 1),
            (cli_run.main, [str(clip), "--backend", "onnxruntime"], 1),
            (cli_fetch.main, [], 1),
            (cli_fetch.main, ["--check"], 1)):
        line = one_line(CliRunner().invoke(main, args), code)
        assert line.startswith(f"Error: {home}: is a file, not a folder ($COVER_HOME")


def test_cover_home_below_a_file(tmp_path, clip, monkeypatch):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    _home(monkeypatch, home / "cache")
    line = one_line(CliRunner().invoke(cli_fetch.main, []), 1)
    assert line.startswith(f"Error: {home / 'cache'}: a part of the path is a file")


def test_cover_home_that_is_not_writable(unwritable, clip, monkeypatch):
    _home(monkeypatch, unwritable)
    for main, args in ((cli_fetch.main, []),
                       (cli_run.main, [str(clip), "--backend", "onnxruntime",
                                       "--random-weights"])):
        line = one_line(CliRunner().invoke(main, args), 1)
        assert line.startswith(f"Error: {unwritable}: not writable: ")
        assert "($COVER_HOME" in line


def test_cover_home_that_is_a_symlink_loop(loop, clip, monkeypatch):
    _home(monkeypatch, loop)
    line = one_line(CliRunner().invoke(cli_fetch.main, []), 1)
    assert line.startswith(f"Error: {loop}: a symlink loop")


# ----------------------------------------------------------------------------- cover-export

def test_export_out_that_is_not_writable(unwritable, monkeypatch, tmp_path):
    for out in (unwritable, unwritable / "new-folder"):
        line = one_line(CliRunner().invoke(cli_export.main, ["--random-weights", "--out",
                                                             str(out)]), 1)
        assert line.startswith(f"Error: {out}: not writable: ") and line.endswith("(--out)")


def test_export_out_through_a_file_or_loop(tmp_path, loop):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line(CliRunner().invoke(cli_export.main, ["--random-weights", "--out",
                                                         str(blocker / "engines")]), 2)
    assert f"{blocker / 'engines'}: a part of the path is a file, not a folder" in line
    line = one_line(CliRunner().invoke(cli_export.main, ["--random-weights", "--out", str(loop)]), 2)
    assert f"Invalid value for '--out': {loop}: a symlink loop" in line


@pytest.mark.parametrize("args,needle", [
    (["--name", "../../escape"], "Invalid value for '--name': '../../escape' is not a plain folder"),
    (["--name", ".."], "is not a plain folder name"),
    (["--batch-max", "0"], "Invalid value for '--batch-max'"),
    (["--batch-max", "100000"], "Invalid value for '--batch-max'"),
    (["--batch-max", "2", "--batch-opt", "4"], "Invalid value for '--batch-opt': 4 is larger than"),
])
def test_export_arguments_are_checked_before_tracing(tmp_path, args, needle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line(CliRunner().invoke(cli_export.main, ["--random-weights"] + args), 2)
    assert needle in line and not (tmp_path / "engines").exists()


# ----------------------------------------------------------------------------- symlink loops

def test_symlink_loop_as_the_file_to_score(loop, no_scorer):
    line = one_line(CliRunner().invoke(cli_run.main, [str(loop)]), 1)
    assert line == f"Error: {loop}: a symlink loop (too many levels of symbolic links)"


@pytest.mark.parametrize("main,option", [
    (cli_run.main, "--engines"), (cli_run.main, "--config"), (cli_run.main, "--weights"),
    (cli_run.main, "--csv"), (cli_eval.main, "--labels"), (cli_eval.main, "--root"),
    (cli_eval.main, "--json"), (cli_fetch.main, "--dir"), (cli_export.main, "--config"),
])
def test_symlink_loop_as_an_option_value(loop, clip, tmp_path, no_scorer, main, option):
    head = {cli_run.main: [str(clip)], cli_fetch.main: [], cli_export.main: [],
            cli_eval.main: ["--labels", str(labels(tmp_path))]}[main]
    if option == "--labels":
        head = []
    line = one_line(CliRunner().invoke(main, head + [option, str(loop)]), 2)
    assert f"Invalid value for '{option}': {loop}: a symlink loop" in line


def test_real_processes_print_one_line_and_no_traceback(loop, tmp_path):
    """The same through ``python -m``, as a shell user runs it (no CliRunner in between)."""
    env = {**os.environ, COVER_HOME_ENV: str(tmp_path / "home")}
    for args, code, needle in (
            ([str(loop)], 1, f"Error: {loop}: a symlink loop"),
            ([str(tmp_path), "--seed", "-1"], 2, "Invalid value for '--seed'"),
            ([str(tmp_path), "--device", "foo"], 2, "'foo' is not a device")):
        proc = subprocess.run([sys.executable, "-m", "cover_engine.runtime.cli.run", *args],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode == code and len(lines) == 1 and needle in lines[0], proc.stderr


def test_a_symlink_loop_inside_a_folder_does_not_break_the_listing(tmp_path, loop):
    (tmp_path / "real.mp4").write_bytes(b"x")
    files, failures = cli_run.expand_inputs([str(tmp_path)])
    assert sorted(f.name for f in files) == ["loop.mp4", "real.mp4"] and not failures
