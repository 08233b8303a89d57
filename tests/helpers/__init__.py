"""What several test files share: synthetic media (:mod:`.media`), fakes of the GPU stack
(:mod:`.gpu_fakes`), toy engine folders (:mod:`.toy_engines`) and a fake scorer over a generated
labelled set (:mod:`.fake_scorer`). Importable as ``helpers.*`` because pytest puts ``tests/``
(the folder of the root ``conftest.py``) on ``sys.path``."""
from __future__ import annotations

import signal
from pathlib import Path

#: The repository root, and the bundled sample clip.
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE = REPO_ROOT / "samples" / "sample.mp4"


def no_block(fn, seconds: int = 20):
    """Run ``fn``; a call that blocks (opening a FIFO blocks forever) fails the test instead of
    hanging the suite."""
    def timeout(*_):
        raise TimeoutError("blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
