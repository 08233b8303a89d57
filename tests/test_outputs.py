"""Outputs never lose or half-write data: score CSVs and reports that cannot be written are
reported in one line, before any scoring where that can be known, and a write that fails midway
stops cleanly with every earlier row intact and no torn row.

Full disks are simulated with a file size limit (``RLIMIT_FSIZE``, what ``ulimit -f`` sets) in a
subprocess; read-only folders, as root, by dropping the capability that lets root ignore file
modes (``setpriv``). A fake scorer reads each "video"'s score from the file, so no model runs.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from cover_engine.runtime.cli import eval as cli_eval
from cover_engine.runtime.cli import run as cli_run
from cover_engine.runtime.durable import check_output_file, write_atomic
from cover_engine.runtime.errors import OutputError
from cover_engine.runtime.results import SCORE_COLUMNS, RowLog, ScoreCsvWriter, read_rows

HEADER = ",".join(SCORE_COLUMNS) + "\n"

#: Runs cover-run or cover-eval with a fake scorer: argv = [command, args...]. The scorer says
#: on stderr when it is built, so a test can tell whether scoring started.
DRIVER = r"""
import sys
from pathlib import Path
from cover_engine.runtime import scoring
from cover_engine.runtime.cli import eval as cli_eval, run as cli_run
from cover_engine.runtime.results import FileScore

class Fake:
    name = "fake"
    score_many = scoring.Scorer.score_many
    def __init__(self, *a, **k):
        print("SCORER BUILT", file=sys.stderr, flush=True)
    def score(self, path):
        q = float(Path(path).read_text())
        return FileScore(str(path), q, q / 2, -q, q / 2, 30, "64x48", "fake", 0.25)

scoring.make_scorer = Fake
cli_eval.build_scorer = Fake
command = {"run": cli_run.main, "eval": cli_eval.main}[sys.argv[1]]
command(sys.argv[2:], prog_name="cover-" + sys.argv[1])
"""


def _videos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"v{i:02d}.mp4"
        p.write_text(repr(0.5 + i / 7))
        paths.append(p)
    return paths


def _labels(folder: Path, videos: list[Path]) -> Path:
    labels = folder / "labels.txt"
    labels.write_text("".join(f"{v.relative_to(folder)},-1,-1,{1 + i % 4 + i / 10}\n"
                              for i, v in enumerate(videos)))
    return labels


def _drive(*args: str, fsize: int | None = None, unprivileged: bool = False, cwd=None):
    """The driver in a subprocess, optionally with a file size limit (bytes) or without root's
    power to write into read-only folders."""
    cmd = [sys.executable, "-c", DRIVER, *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is not available to drop DAC override")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--", *cmd]

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=limit,
                         cwd=cwd, env=env)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def _row_text(name: str, seconds: float = 0.25) -> str:
    """The CSV line (no newline) the writer makes for a fixed score of ``name``."""
    from cover_engine.runtime.results import FileScore, _format_line

    row = FileScore(name, 0.1, 0.2, 0.3, 0.6, 30, "64x48", "fake", seconds).to_row()
    return _format_line([row[c] for c in SCORE_COLUMNS]).decode().rstrip("\n")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error")]


def _whole_rows(path: Path) -> list[str]:
    """The file's lines, asserting it ends with a newline (no torn row) and has one header."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-80:]
    lines = data.decode().splitlines()
    assert lines[0] + "\n" in (HEADER, HEADER.rstrip("\n") + ",mos\n")
    assert sum(line == lines[0] for line in lines) == 1
    n = lines[0].count(",")
    assert all(line.count(",") == n for line in lines)
    return lines[1:]


# ----------------------------------------------------------------------------- before scoring

@pytest.mark.parametrize("command", ["run", "eval"])
@pytest.mark.parametrize("case", ["parent is a file", "foreign header", "fifo", "device",
                                  "no space for the header"])
def test_unusable_csv_is_one_line_before_scoring(tmp_path, command, case):
    videos = _videos(tmp_path / "clips", 3)
    csv = tmp_path / "scores.csv"
    fsize = None
    if case == "parent is a file":
        (tmp_path / "afile").write_text("x")
        csv = tmp_path / "afile" / "scores.csv"
        cause = "file, not a folder"  # found when the options are parsed (exit code 2)
    elif case == "foreign header":
        csv.write_text("when,what\nmonday,plan\n")
        cause = "columns when,what do not match"
    elif case == "fifo":
        os.mkfifo(csv)
        cause = "is a FIFO (named pipe), not a file"
    elif case == "device":
        csv = Path("/dev/full")
        cause = "is a character device, not a file"
    else:
        fsize = 0
        cause = "File too large"
    args = ([*map(str, videos), "--csv", str(csv)] if command == "run" else
            ["--labels", str(_labels(tmp_path, videos)), "--root", str(tmp_path), "--csv", str(csv)])
    before = csv.read_bytes() if case == "foreign header" else None
    out = _drive(command, *args, fsize=fsize)
    assert out.returncode == (2 if case == "parent is a file" else 1), out
    errors = _error_lines(out.stderr)
    assert len(errors) == 1 and str(csv) in errors[0] and cause in errors[0], out.stderr
    assert "SCORER BUILT" not in out.stderr  # refused before any scoring
    if before is not None:
        assert csv.read_bytes() == before  # someone else's file is left as it was


@pytest.mark.parametrize("command", ["run", "eval"])
def test_read_only_folder_is_one_line_before_scoring(tmp_path, command):
    videos = _videos(tmp_path / "clips", 2)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    csv = locked / "scores.csv"
    args = ([*map(str, videos), "--csv", str(csv)] if command == "run" else
            ["--labels", str(_labels(tmp_path, videos)), "--root", str(tmp_path), "--csv", str(csv)])
    try:
        out = _drive(command, *args, unprivileged=True)
    finally:
        locked.chmod(0o755)
    assert out.returncode == 1
    errors = _error_lines(out.stderr)
    assert len(errors) == 1 and str(csv) in errors[0] and "Permission denied" in errors[0], \
        out.stderr
    assert "SCORER BUILT" not in out.stderr and not csv.exists()


# ----------------------------------------------------------------------------- during scoring

@pytest.mark.parametrize("command", ["run", "eval"])
def test_disk_full_mid_batch_stops_with_whole_rows(tmp_path, command):
    videos = _videos(tmp_path / "clips", 8)
    csv = tmp_path / "scores.csv"
    # room for the header and about two and a half rows: the third row is cut by the limit
    probe = tmp_path / "probe.csv"
    with ScoreCsvWriter(probe, ("mos",) if command == "eval" else ()) as w:
        pass
    row = len(_row_text(str(videos[0]))) + (6 if command == "eval" else 1)
    limit = probe.stat().st_size + int(2.5 * row)
    args = ([*map(str, videos), "--csv", str(csv)] if command == "run" else
            ["--labels", str(_labels(tmp_path, videos)), "--root", str(tmp_path), "--csv", str(csv)])
    out = _drive(command, *args, fsize=limit)
    assert out.returncode == 1
    errors = _error_lines(out.stderr)
    assert len(errors) == 1 and str(csv) in errors[0] and "File too large" in errors[0], out.stderr
    rows = _whole_rows(csv)
    assert 1 <= len(rows) < len(videos)
    assert [r.split(",")[0].rsplit("/", 1)[-1] for r in rows] == \
        [f"v{i:02d}.mp4" for i in range(len(rows))]
    if command == "eval":  # and the run continues where it stopped
        again = _drive("eval", *args, "--resume")
        assert again.returncode == 0, again.stderr
        assert len(_whole_rows(csv)) == len(videos)


def test_failed_append_is_cut_back_off(tmp_path):
    """At the RowLog level: a row the size limit cuts is removed again; the file ends with the
    previous whole row and later appends (once there is room) continue from there."""
    code = ("import sys; from cover_engine.runtime.results import RowLog\n"
            "from cover_engine.runtime.errors import OutputError\n"
            "log = RowLog(sys.argv[1], ('name', 'x'), resume=True)\n"
            "try:\n"
            "    for i in range(100): log.append({'name': f'v{i}', 'x': 'y' * 20})\n"
            "except OutputError as e: print(e)\n")
    path = tmp_path / "log.csv"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         preexec_fn=limit, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{path}: cannot write (File too large" in out.stdout
    data = path.read_bytes()
    assert len(data) < 100 and data.endswith(b"\n")
    lines = data.decode().splitlines()
    assert lines[0] == "name,x" and all(line == f"v{i},{'y' * 20}" for i, line in enumerate(lines[1:]))
    with RowLog(path, ("name", "x"), resume=True) as log:
        assert log.dropped == b"" and len(log.rows) == len(lines) - 1
        log.append({"name": "next", "x": 1})
    assert path.read_text().splitlines()[-1] == "next,1"


# ----------------------------------------------------------------------------- last row

def test_whole_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("name,x\na,1\nb,2")  # saved by an editor that drops the final newline
    assert [r["name"] for r in read_rows(path)[1]] == ["a", "b"]
    with RowLog(path, ("name", "x"), resume=True) as log:
        assert [r["name"] for r in log.rows] == ["a", "b"] and log.dropped == b""
        log.append({"name": "c", "x": 3})
    assert path.read_text() == "name,x\na,1\nb,2\nc,3\n"


@pytest.mark.parametrize("tail", [b"b", b"b,", b'"b,2', b"b,\xff"])
def test_torn_last_row_is_dropped(tmp_path, tail):
    path = tmp_path / "s.csv"
    path.write_bytes(b"name,x\na,1\n" + tail)
    assert [r["name"] for r in read_rows(path)[1]] == ["a"]
    with RowLog(path, ("name", "x"), resume=True) as log:
        assert log.dropped == tail and [r["name"] for r in log.rows] == ["a"]
    assert path.read_bytes() == b"name,x\na,1\n"


def test_score_csv_keeps_a_whole_last_row_only_if_its_values_parse(tmp_path):
    good = _row_text("clip.mp4")
    path = tmp_path / "s.csv"
    path.write_text(HEADER + good)
    with ScoreCsvWriter(path) as w:
        assert [r["name"] for r in w.rows] == ["clip.mp4"]
    assert path.read_text() == HEADER + good + "\n"
    bad = good.replace(",30,", ",3x,")  # frames not a number: torn or not ours
    assert bad != good
    path.write_text(HEADER + bad)
    with ScoreCsvWriter(path) as w:
        assert w.rows == [] and w.dropped == bad.encode()


# ----------------------------------------------------------------------------- concurrency

CREATE = r"""
import sys, time
from pathlib import Path
from cover_engine.runtime.results import ScoreCsvWriter, FileScore
path, go, k = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
with ScoreCsvWriter(path) as w:
    for i in range(5):
        w.write(FileScore(f"p{k}-{i}.mp4", 0.1, 0.2, 0.3, 0.6, 30, "64x48", "fake", 0.1))
"""


def test_processes_creating_one_csv_write_one_header(tmp_path):
    path, go = tmp_path / "shared.csv", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, str(path), str(go), str(k)],
                              stderr=subprocess.PIPE) for k in range(8)]
    go.touch()  # all start creating the file at once
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    rows = _whole_rows(path)
    assert sorted(rows) == sorted(_row_text(f"p{k}-{i}.mp4", seconds=0.1)
                                  for k in range(8) for i in range(5))


def test_a_writer_waits_for_the_lock_before_reading_the_end(tmp_path):
    """Deterministic half of the race: while another holder of the lock has created the file
    but not yet written its header, a second writer waits and then finds that header."""
    import fcntl

    path = tmp_path / "shared.csv"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    result = {}

    def second():
        with ScoreCsvWriter(path) as w:
            result["rows"] = list(w.rows)
        done.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    assert not done.wait(0.5)  # blocked on the lock, header not written by it
    os.write(fd, HEADER.encode())
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    assert done.wait(10)
    assert path.read_text() == HEADER and result["rows"] == []


# ----------------------------------------------------------------------------- reports

@pytest.mark.parametrize("option", ["--json", "--rescaled", "--plot"])
@pytest.mark.parametrize("where,cause", [("missing/r.out", "folder {tmp}/missing does not exist"),
                                         ("afile/r.out", "file, not a folder"),
                                         ("adir", "adir' is a directory")])
def test_eval_reports_are_checked_before_the_evaluation(tmp_path, monkeypatch, option, where,
                                                        cause):
    if option == "--plot":
        pytest.importorskip("matplotlib")
    videos = _videos(tmp_path / "clips", 3)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    built = []
    monkeypatch.setattr(cli_eval, "build_scorer", lambda **k: built.append(1))
    csv = tmp_path / "s.csv"
    result = CliRunner().invoke(cli_eval.main, [
        "--labels", str(_labels(tmp_path, videos)), "--root", str(tmp_path), "--csv", str(csv),
        option, str(tmp_path / where)])
    assert result.exit_code == 2, result.output
    assert cause.format(tmp=tmp_path) in result.output and option in result.output
    assert built == [] and not csv.exists()


@pytest.mark.parametrize("option", ["--json", "--rescaled", "--plot"])
def test_eval_reports_into_a_read_only_folder_are_checked_before(tmp_path, option):
    if option == "--plot":
        pytest.importorskip("matplotlib")
    videos = _videos(tmp_path / "clips", 3)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        out = _drive("eval", "--labels", _labels(tmp_path, videos), "--root", tmp_path,
                     "--csv", tmp_path / "s.csv", option, locked / "r.out", unprivileged=True)
    finally:
        locked.chmod(0o755)
    assert out.returncode == 2
    assert f"cannot create files in {locked} (Permission denied)" in out.stderr
    assert "SCORER BUILT" not in out.stderr and not (tmp_path / "s.csv").exists()


def test_eval_reports_that_fail_when_written_leave_no_partial_file(tmp_path):
    """The disk fills up after the check: one line, and the old report is still whole."""
    videos = _videos(tmp_path / "clips", 20)
    report = tmp_path / "r.json"
    report.write_text('{"old": true}\n')
    csv = tmp_path / "s.csv"
    args = ["--labels", _labels(tmp_path, videos), "--root", tmp_path, "--csv", csv]
    assert _drive("eval", *args).returncode == 0
    limit = 100  # a per-file limit: the finished CSV is not written again; the report does not fit
    out = _drive("eval", *args, "--resume", "--json", report, fsize=limit)
    assert out.returncode == 1
    errors = _error_lines(out.stderr)
    assert len(errors) == 1 and str(report) in errors[0] and "File too large" in errors[0]
    assert report.read_text() == '{"old": true}\n'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.json")]


def test_bench_reports_are_checked_at_parse_time(tmp_path):
    from cover_engine.runtime.cli import bench as cli_bench

    result = CliRunner().invoke(cli_bench.main, ["--json", str(tmp_path / "nope" / "b.json")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_check_output_file_and_write_atomic(tmp_path):
    check_output_file(tmp_path / "new.json")
    assert not list(tmp_path.iterdir())  # the probe file is gone again
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="is a FIFO"):
        check_output_file(tmp_path / "fifo")
    target = tmp_path / "r.json"
    write_atomic(target, b"{}\n")
    assert target.read_bytes() == b"{}\n"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    write_atomic(link, b"new")  # the link is replaced, its target untouched
    assert victim.read_text() == "precious" and link.read_bytes() == b"new"
    assert not link.is_symlink()


def test_cover_run_leaves_no_header_only_csv_when_the_scorer_cannot_start(tmp_path, monkeypatch):
    from cover_engine.runtime import scoring
    from cover_engine.runtime.errors import EngineError

    def broken(*a, **k):
        raise EngineError("no engines here")

    monkeypatch.setattr(scoring, "make_scorer", broken)
    csv = tmp_path / "s.csv"
    result = CliRunner().invoke(cli_run.main, [str(tmp_path / "x.mp4"), "--csv", str(csv)])
    assert result.exit_code == 1 and "no engines here" in result.output
    assert not csv.exists()


def test_eval_csv_with_rows_needs_resume_and_is_left_untouched(tmp_path):
    videos = _videos(tmp_path / "clips", 4)
    csv = tmp_path / "s.csv"
    args = ["--labels", _labels(tmp_path, videos), "--root", tmp_path, "--csv", csv]
    assert _drive("eval", *args).returncode == 0
    with open(csv, "ab") as f:
        f.write(b"clips/v09.mp4,0.1")  # torn by a crash
    before = csv.read_bytes()
    out = _drive("eval", *args)
    assert out.returncode == 2 and csv.read_bytes() == before
    errors = _error_lines(out.stderr)
    assert len(errors) == 1 and "already holds results; continue it (--resume)" in errors[0]
    assert "SCORER BUILT" not in out.stderr
    out = _drive("eval", *args, "--resume")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("dropped a partly written last row") == 1
    assert len(_whole_rows(csv)) == 4
