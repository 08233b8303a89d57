"""The package root's Python API: cheap to import, and the README's three lines score a file."""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import SAMPLE

import cover_engine
from cover_engine.runtime.errors import CoverError, InputError



def test_import_is_cheap_and_names_resolve_lazily():
    code = ("import sys, cover_engine; heavy = [m for m in ('torch', 'av', 'onnxruntime') "
            "if m in sys.modules]; print(heavy); cover_engine.make_scorer; "
            "print('av' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = out.stdout.split()
    assert before == "[]" and after == "True"  # scoring pulls in the decoder only when asked


def test_public_names():
    assert set(cover_engine.__all__) <= set(dir(cover_engine))
    assert cover_engine.CoverError is CoverError and issubclass(cover_engine.InputError, CoverError)
    from cover_engine.runtime.results import FileScore
    from cover_engine.runtime.scoring import make_scorer

    assert cover_engine.FileScore is FileScore and cover_engine.make_scorer is make_scorer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cover_engine.nope  # noqa: B018


def test_readme_example_scores_a_file(vectors_dir):
    """The README's lines, with the vectors' small model and random weights for the official
    weights (not on this machine)."""
    from cover_engine import FileScore, make_scorer

    with make_scorer(backend="torch", random_weights=True,
                     config=vectors_dir / "model" / "config.json", log=lambda m: None) as scorer:
        score = scorer.score(SAMPLE)
        with pytest.raises(InputError, match="no such file"):
            scorer.score(SAMPLE.with_name("absent.mp4"))
    assert isinstance(score, FileScore) and score.frames == 64 and score.backend == "torch"
    assert score.overall == pytest.approx(score.semantic + score.technical + score.aesthetic)
