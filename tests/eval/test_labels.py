"""Hostile label files: non-finite MOS, one file under several spellings, CSV quoting.

Each test writes its own hostile file; every refusal must name the file and the line.
"""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from cover_engine.runtime.cli import eval as cli_eval
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.eval import evaluate as ev
from cover_engine.runtime.eval.labels import check_distinct_files, name_key, read_labels
from cover_engine.runtime.results import read_rows

from helpers.fake_scorer import FakeScorer


def _refused(tmp_path, text: str, fmt: str = "auto", name: str = "labels.txt", **kwargs) -> str:
    f = tmp_path / name
    f.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(InputError) as info:
        read_labels(f, fmt, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{f}:") and "\n" not in message
    return message


# --- MOS must be finite --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_non_finite_mos_refused_upstream(tmp_path, bad):
    msg = _refused(tmp_path, f"a.mp4, -1, -1, 3.1\nb.mp4, -1, -1, {bad}\n")
    assert msg.startswith(f"{tmp_path / 'labels.txt'}:2: ")
    assert "'b.mp4'" in msg and "not a finite number" in msg


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_non_finite_mos_refused_csv(tmp_path, bad):
    msg = _refused(tmp_path, f"name,mos\na.mp4,3\nb.mp4,2\nc.mp4,{bad}\n", name="meta.csv")
    assert msg.startswith(f"{tmp_path / 'meta.csv'}:4: ") and "mos of 'c.mp4'" in msg
    assert "not a finite number" in msg


# --- one file, one row ---------------------------------------------------------------------------

@pytest.mark.parametrize("second", ["./v1.mp4", "sub/../v1.mp4", ".//v1.mp4", "v1.mp4/", "v1.mp4"])
def test_one_file_under_two_spellings_refused_naming_both_rows(tmp_path, second):
    msg = _refused(tmp_path, f"v1.mp4, -1, -1, 3.0\nv2.mp4, -1, -1, 2.0\n{second}, -1, -1, 4.0\n")
    assert msg.startswith(f"{tmp_path / 'labels.txt'}:3: {second!r}")
    assert "line 1" in msg and ("'v1.mp4'" in msg.split(":", 2)[2] or second == "v1.mp4")


def test_two_spellings_refused_in_csv_too(tmp_path):
    msg = _refused(tmp_path, "name,mos\nsub/../d/v1.mp4,3\nd/./v1.mp4,4\n", name="m.csv")
    assert ":3: 'd/./v1.mp4' names the same file as 'sub/../d/v1.mp4', already listed on line 2" in msg


def test_name_key_is_lexical():
    assert {name_key(n) for n in ("v1.mp4", "./v1.mp4", "sub/../v1.mp4", "a/../v1.mp4/")} == {"v1.mp4"}
    assert name_key("a/v1.mp4") != name_key("v1.mp4")


def test_same_file_found_through_different_names_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "v1.mp4").write_bytes(b"x")
    (tmp_path / "d" / "v2.mp4").write_bytes(b"y")
    os.symlink(tmp_path / "d", tmp_path / "link")
    labels = tmp_path / "labels.txt"
    for first, second in [("d/v1.mp4", str(tmp_path / "d" / "v1.mp4")),  # relative and absolute
                          ("d/v1", "d/v1.mp4"),                          # implicit extension
                          ("d/v1.mp4", "link/v1.mp4")]:                   # through a symlink
        labels.write_text(f"{first},-1,-1,1\nd/v2.mp4,-1,-1,2\n{second},-1,-1,3\n")
        items = read_labels(labels)  # lexically distinct: only the file system knows
        with pytest.raises(InputError) as info:
            check_distinct_files(labels, items, tmp_path)
        msg = str(info.value)
        assert msg.startswith(f"{labels}:3: {second!r} names the same file as {first!r} on line 1")
        assert f"(both are {os.path.realpath(tmp_path / 'd' / 'v1.mp4')})" in msg
    labels.write_text("d/v1.mp4,-1,-1,1\nabsent.mp4,-1,-1,2\nd/v2.mp4,-1,-1,3\n")
    check_distinct_files(labels, read_labels(labels), tmp_path)  # distinct, one missing: fine


# --- CSV quoting ---------------------------------------------------------------------------------

def test_quoted_commas_and_line_breaks_are_data(tmp_path):
    f = tmp_path / "meta.csv"
    f.write_text('name,comment,mos\n'
                 '"clip, one.mp4","plain",3.5\n'
                 'two.mp4,"spans\nthree\nlines, with commas",4.25\n'
                 '"say ""hi"".mp4",,1\n'
                 'four.mp4,x,2\n', newline="")
    items = read_labels(f)
    assert [(i.name, i.mos, i.line) for i in items] == [
        ("clip, one.mp4", 3.5, 2), ("two.mp4", 4.25, 3), ('say "hi".mp4', 1.0, 6), ("four.mp4", 2.0, 7)]


def test_line_numbers_count_physical_lines_after_a_multiline_field(tmp_path):
    msg = _refused(tmp_path, 'name,note,mos\na.mp4,"x\ny\nz",1\nb.mp4,ok,bad\n', name="m.csv")
    assert msg.startswith(f"{tmp_path / 'm.csv'}:5: need a name and a numeric mos")


def test_quoted_separators_do_not_fool_the_separator_guess(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text('name,mos\n"a;b;c;d.mp4",3\n"e;f;g;h.mp4",4\n')
    assert [i.name for i in read_labels(f)] == ["a;b;c;d.mp4", "e;f;g;h.mp4"]
    g = tmp_path / "s.csv"
    g.write_text('name;mos\n"a,b,c.mp4";3\n')
    assert [(i.name, i.mos) for i in read_labels(g)] == [("a,b,c.mp4", 3.0)]


@pytest.mark.parametrize("text,line,needle", [
    ('name,mos\na.mp4,1\n"b.mp4,2\nc.mp4,3\n', 3, "never closed"),
    ('name,mos\na.mp4,1\n"b".mp4,2\n', 3, "quote a field whole"),
    ('name,mos\na.mp4,1\nb\x00.mp4,2\n', 3, "holds a line break or NUL"),
    ('name,mos\na.mp4,1\nb.mp4,2\n"' + "x" * 200_000 + '",3\n', 4, "field larger than field limit"),
])
def test_broken_quoting_refused_naming_the_line(tmp_path, text, line, needle):
    msg = _refused(tmp_path, text, "csv", name="m.csv")
    assert msg.startswith(f"{tmp_path / 'm.csv'}:{line}: ") and needle in msg


def test_line_break_in_a_name_refused(tmp_path):
    msg = _refused(tmp_path, 'name,mos\na.mp4,1\n"b\n.mp4",2\n', name="m.csv")
    assert msg.startswith(f"{tmp_path / 'm.csv'}:3: name 'b\\n.mp4' holds a line break")


def test_upstream_names_may_hold_commas_but_not_quotes(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("clip, one.mp4, -1, -1, 3.5\ntwo.mp4, 8.0, 29.97, 4\n")
    assert [(i.name, i.mos) for i in read_labels(f)] == [("clip, one.mp4", 3.5), ("two.mp4", 4.0)]
    msg = _refused(tmp_path, 'a.mp4, -1, -1, 1\n"b, c.mp4", -1, -1, 3.5\n')
    assert msg.startswith(f"{tmp_path / 'labels.txt'}:2: quoted name") and "CSV with a header" in msg


def test_name_with_a_comma_survives_the_score_csv_and_resume(tmp_path):
    (tmp_path / "v, 1.mp4").write_text("3.0")
    (tmp_path / "v2.mp4").write_text("5.0")
    f = tmp_path / "meta.csv"
    f.write_text('name,mos\n"v, 1.mp4",2.5\nv2.mp4,3.5\n')
    items = read_labels(f)
    csv_path = tmp_path / "s.csv"
    ev.evaluate(items, FakeScorer(), csv_path, root=tmp_path, progress=False)
    assert [r["name"] for r in read_rows(csv_path)[1]] == ["v, 1.mp4", "v2.mp4"]
    again = FakeScorer()
    run = ev.evaluate(items, again, csv_path, root=tmp_path, resume=True, progress=False)
    assert run.resumed == 2 and again.calls == []


# --- through the command ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("v1.mp4,-1,-1,nan\n", ":1: MOS of 'v1.mp4' is 'nan', not a finite number"),
    ("v1.mp4,-1,-1,1\n./v1.mp4,-1,-1,2\n", ":2: './v1.mp4' names the same file as 'v1.mp4'"),
    ("v1.mp4,-1,-1,1\nv1,-1,-1,2\n", ":2: 'v1' names the same file as 'v1.mp4' on line 1"),
])
def test_cover_eval_refuses_in_one_line_before_scoring(tmp_path, monkeypatch, text, needle):
    built = []
    monkeypatch.setattr(cli_eval, "build_scorer", lambda **o: built.append(o) or FakeScorer())
    (tmp_path / "v1.mp4").write_text("1.0")
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    result = CliRunner().invoke(cli_eval.main, ["--labels", str(labels), "--root", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {labels}{needle}")
    assert not built and not (tmp_path / "labels.cover.csv").exists()
