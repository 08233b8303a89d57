"""Media names are local files, never URLs or protocols; special files get their own message.

FFmpeg reads ``file:a.mp4``, ``http:b.mp4``, ``concat:a.mp4|b.mp4`` and ``pipe:0`` as protocols
and ``img%d.png`` as an image sequence. Every test here writes files whose literal names look
like that, each with its own frame count or size, and checks that exactly that file is read --
and that when no such file exists, nothing else (a network address, stdin, other files) is.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cover_engine.runtime.cli.run import expand_inputs, main as run_main
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.media.decode import probe
from cover_engine.runtime.results import FileScore
from cover_engine.runtime.scoring import Scorer

from helpers.media import flat, write_image, write_video
from helpers import no_block

#: Literal file names that FFmpeg would otherwise take as a protocol, with their frame counts.
PROTOCOL_NAMES = {"file:a.mp4": 7, "http:b.mp4": 5, "concat:a.mp4|b.mp4": 6, "pipe:0": 4,
                  "subfile,,start,0,end,0,,:a.mp4": 3}
#: Frame counts of the plain files the protocols would point at instead.
PLAIN = {"a.mp4": 10, "b.mp4": 9}


def _video(folder: Path, name: str, frames: int) -> Path:
    """A small H.264 clip with ``frames`` frames, written under a plain name, then renamed
    (writing through PyAV would itself parse the protocol)."""
    tmp = write_video(folder / f".tmp-{frames}.mp4", [flat(32, 48, t) for t in range(frames)])
    return Path(shutil.move(tmp, folder / name))


@pytest.fixture()
def media_dir(tmp_path, monkeypatch):
    for name, frames in {**PLAIN, **PROTOCOL_NAMES}.items():
        _video(tmp_path, name, frames)
    monkeypatch.chdir(tmp_path)  # relative names, as a user types them
    return tmp_path


@pytest.mark.parametrize("name", sorted(PROTOCOL_NAMES))
def test_protocol_like_names_are_the_files_of_that_name(media_dir, name):
    assert probe(name).num_frames == PROTOCOL_NAMES[name]
    assert probe(media_dir / name).num_frames == PROTOCOL_NAMES[name]


@pytest.mark.parametrize("name", sorted(PROTOCOL_NAMES))
def test_absent_protocol_like_names_touch_nothing_else(media_dir, name):
    """With no file of that name, the name is missing: FFmpeg is not asked to read a.mp4 (file:,
    concat:, subfile), a network address (http:) or stdin (pipe:)."""
    (media_dir / name).unlink()
    with pytest.raises(InputError, match="no such file") as err:
        probe(name)
    assert str(err.value).startswith(name + ":")


def test_pipe_name_never_reads_stdin(media_dir):
    """``pipe:0`` with another video on stdin: the file named ``pipe:0`` is read, stdin is not;
    and without that file, stdin is still not read."""
    code = ("import sys; sys.path.insert(0, {tests!r}); "
            "from cover_engine.runtime.media.decode import probe; "
            "from cover_engine.runtime.errors import InputError\n"
            "try: print(probe('pipe:0').num_frames)\n"
            "except InputError as e: print('refused', e)\n"
            "print(len(sys.stdin.buffer.read()))")

    def run():
        with open(media_dir / "a.mp4", "rb") as stdin:
            out = subprocess.run([sys.executable, "-c", code.format(tests=str(Path(__file__).parent.parent))],
                                 stdin=stdin, capture_output=True, text=True, timeout=120,
                                 cwd=media_dir)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    size = (media_dir / "a.mp4").stat().st_size
    assert run() == [str(PROTOCOL_NAMES["pipe:0"]), str(size)]  # stdin left whole
    (media_dir / "pipe:0").unlink()
    first, rest = run()
    assert first.startswith("refused pipe:0: no such file") and rest == str(size)


def test_image_name_with_a_pattern_is_that_image(tmp_path, monkeypatch):
    """``img%d.png`` is one file, not the sequence img1.png, img2.png..."""
    write_image(tmp_path / "img1.png", np.zeros((32, 48, 3), np.uint8))
    literal = write_image(tmp_path / "lit.png", np.zeros((64, 80, 3), np.uint8))
    literal.rename(tmp_path / "img%d.png")
    monkeypatch.chdir(tmp_path)
    info = probe("img%d.png")
    assert (info.width, info.height, info.num_frames) == (80, 64, 1)


# ----------------------------------------------------------------------------- special files



def test_fifo_is_named_for_what_it_is(tmp_path):
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(InputError) as err:
        no_block(lambda: probe(fifo))
    assert str(err.value) == f"{fifo}: is a FIFO (named pipe), not a video or image file"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_character_device_is_named_for_what_it_is():
    with pytest.raises(InputError) as err:
        no_block(lambda: probe("/dev/zero"))
    assert str(err.value) == "/dev/zero: is a character device, not a video or image file"


def test_empty_file_is_still_empty(tmp_path):
    (tmp_path / "e.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="file is empty"):
        probe(tmp_path / "e.mp4")


def _deny_listing(monkeypatch, folder: Path):
    """Listing ``folder`` fails with EACCES (root ignores chmod, so the tests simulate it)."""
    real = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)).absolute() == folder:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_folder_is_reported_as_such(tmp_path, monkeypatch):
    top = tmp_path / "clips"
    (top / "locked").mkdir(parents=True)
    _video(top, "ok.mp4", 3)
    _deny_listing(monkeypatch, top / "locked")
    files, problems = expand_inputs([str(top)])
    assert files == [top / "ok.mp4"]
    assert problems == [(str(top / "locked"),
                         f"{top / 'locked'}: cannot list folder (Permission denied)")]
    _deny_listing(monkeypatch, top)
    files, problems = expand_inputs([str(top)])
    assert files == [] and [p[1] for p in problems] == [f"{top}: cannot list folder "
                                                        "(Permission denied)"]


def test_unreadable_folder_for_real(tmp_path):
    """A folder with mode 000, listed by a process without root's power to ignore modes."""
    locked = tmp_path / "locked"
    locked.mkdir()
    _video(locked, "x.mp4", 3)
    cmd = [sys.executable, "-c", "import sys; from cover_engine.runtime.cli.run import "
           "expand_inputs; print(expand_inputs(sys.argv[1:]))", str(locked)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is not available to drop DAC override")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    locked.chmod(0)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        locked.chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(([], [(str(locked), f"{locked}: cannot list folder "
                                                          "(Permission denied)")]))


def test_special_files_in_a_folder_are_reported_not_skipped(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    files, problems = expand_inputs([str(tmp_path)])
    assert sorted(f.name for f in files) == ["gone.mp4", "pipe.mp4"] and problems == []


class _ProbeScorer:
    """Opens each file as the real scorers do (``probe``), then reports its frame count."""

    name = "probe"
    score_many = Scorer.score_many  # the real batch loop over score()

    def score(self, path):
        info = probe(path)
        return FileScore(str(path), 0.0, 0.0, 0.0, 0.0, info.num_frames,
                         f"{info.width}x{info.height}", "probe", 0.0)


def test_cover_run_names_each_special_input_in_one_line(media_dir, monkeypatch):
    import cover_engine.runtime.scoring as scoring

    monkeypatch.setattr(scoring, "make_scorer", lambda *a, **k: _ProbeScorer())
    os.mkfifo(media_dir / "fifo.mp4")
    locked = media_dir / "locked"
    locked.mkdir()
    _deny_listing(monkeypatch, media_dir / "locked")
    args = ["concat:a.mp4|b.mp4", "http:b.mp4", "file:nothing.mp4", "fifo.mp4", "locked",
            "/dev/zero", "--json", "-q"]
    res = no_block(lambda: CliRunner().invoke(run_main, args))
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    scored = {o["path"]: o["frames"] for o in map(json.loads, res.stdout.splitlines())}
    assert scored == {"concat:a.mp4|b.mp4": 6, "http:b.mp4": 5}
    summary = [line.strip() for line in
               res.stderr.split("failed, 2 scored:", 1)[1].strip().splitlines()]
    assert len(summary) == 4, summary
    assert any("locked: cannot list folder (Permission denied)" in line for line in summary), summary
    assert "fifo.mp4: is a FIFO (named pipe), not a video or image file" in summary
    assert "/dev/zero: is a character device, not a video or image file" in summary
    assert "file:nothing.mp4: no such file" in summary
    assert "Traceback" not in res.output


def test_cover_eval_lists_special_files_as_unreadable_not_missing(media_dir):
    from cover_engine.runtime.eval.evaluate import evaluate
    from cover_engine.runtime.eval.labels import LabelItem

    os.mkfifo(media_dir / "fifo.mp4")
    items = [LabelItem("concat:a.mp4|b.mp4", 3.0), LabelItem("fifo.mp4", 2.0),
             LabelItem("fifo", 1.0), LabelItem("gone.mp4", 1.5)]
    run = no_block(lambda: evaluate(items, _ProbeScorer(), media_dir / "s.csv", root=media_dir,
                                     progress=False))
    assert {k: s.frames for k, s in run.scores.items()} == {"concat:a.mp4|b.mp4": 6}
    assert run.missing == ["gone.mp4"]
    assert [name for name, _ in run.failed] == ["fifo.mp4", "fifo"]  # "fifo" finds fifo.mp4
    assert all("is a FIFO (named pipe)" in why for _, why in run.failed)
