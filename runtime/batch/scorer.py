"""``CoverScorer``: the callable class Ray Data runs on each worker (``ds.map_batches``).

Usage, for a dataset with a ``path`` column of absolute paths every worker can open::

    ds.map_batches(CoverScorer, fn_constructor_kwargs=dict(engines="/shared/cover-fp32"),
                   compute=ray.data.ActorPoolStrategy(size=4), num_gpus=0.5, batch_size=8)

Each actor builds its scorer once (loading graphs or engines is the expensive part) and then
scores whole files: it opens and decodes each file itself, so only paths travel to it and
only one small row per file travels back -- never frames. A file that cannot be scored becomes
a row with null scores and the cause in ``error``; the batch never fails because of one file.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

from cover_engine.runtime.batch.fingerprint import fingerprint
from cover_engine.runtime.batch.schema import rows_to_table
from cover_engine.runtime.constants import DEFAULT_COLOUR
from cover_engine.runtime.errors import CoverError, one_line

__all__ = ["CoverScorer", "describe_error", "batch_paths"]


def describe_error(path: str, exc: BaseException) -> str:
    """One line naming the file and the cause."""
    text = one_line(exc)
    return text if path in text else f"{path}: {text}"


def batch_paths(batch: Any) -> list[str]:
    """The ``path`` column of a batch in any of Ray Data's formats (numpy dict, Arrow, pandas)."""
    try:
        column = batch["path"]
    except (KeyError, TypeError):
        raise CoverError("CoverScorer needs a 'path' column in every batch") from None
    if hasattr(column, "to_pylist"):  # pyarrow (Chunked)Array
        return [str(p) for p in column.to_pylist()]
    return [str(p) for p in list(column)]


def _assigned_cpus() -> Optional[int]:
    """CPUs Ray reserved for this actor (so the model uses that many threads), else None."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:
        return None
    return max(1, int(cpus)) if cpus else None


class CoverScorer:
    """Scores batches of file paths; returns one result row per path (see ``schema.RESULT_COLUMNS``).

    Keyword arguments are those of ``cover_engine.runtime.scoring.make_scorer`` (backend, engines,
    weights, clip_weights, config, device, precision, torch_mode, seed, clips, random_weights,
    head, colour), plus
    ``threads`` (default: the CPUs Ray reserved for this actor; ONNX Runtime's and the video
    decoder's threads in this process) and ``fingerprint``
    (``sampled`` or ``full``, see ``fingerprint.py``). On a cluster, every path and file named
    here must exist on every worker node.
    """

    def __init__(self, backend: str = "auto", *, engines=None, weights=None, clip_weights=None,
                 config=None, device: str = "cpu", precision: str = "fp32",
                 torch_mode: str = "eager", seed: Optional[int] = None, clips: int = 1,
                 random_weights: bool = False, head=None, colour: str = DEFAULT_COLOUR,
                 threads: Optional[int] = None, fingerprint: str = "sampled", quiet: bool = True):
        from cover_engine.runtime.media.decode import set_decoder_threads
        from cover_engine.runtime.scoring import make_scorer

        threads = threads or _assigned_cpus()
        set_decoder_threads(threads)  # the actor owns its process: decode on its own cores
        self.fingerprint_kind = fingerprint
        self.colour = colour
        self.scorer = make_scorer(
            backend, engines=engines, weights=weights, clip_weights=clip_weights, device=device,
            precision=precision, torch_mode=torch_mode, seed=seed, clips=clips, config=config,
            random_weights=random_weights, head=head, colour=colour,
            threads=threads,
            log=(lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr)))
        self.backend = self.scorer.name

    def score_one(self, path: str) -> dict[str, Any]:
        """The result row of one file (never raises for a bad file)."""
        started = time.perf_counter()
        row: dict[str, Any] = {"path": path, "backend": self.backend, "colour": self.colour}
        try:
            row["fingerprint"] = fingerprint(path, self.fingerprint_kind)
        except OSError as exc:
            row["error"] = f"{path}: cannot read ({exc.strerror or type(exc).__name__})"
            row["seconds"] = time.perf_counter() - started
            return row
        try:
            score = self.scorer.score(Path(path))
        except Exception as exc:  # one bad file is a row, never a failed batch
            row["error"] = describe_error(path, exc)
        else:
            row.update(semantic=score.semantic, technical=score.technical,
                       aesthetic=score.aesthetic, overall=score.overall, frames=score.frames,
                       resolution=score.resolution, backend=score.backend, colour=score.colour)
        row["seconds"] = time.perf_counter() - started
        return row

    def __call__(self, batch: Any):
        """Ray Data entry point: a batch with a ``path`` column -> an Arrow table of result rows."""
        return rows_to_table(self.score_one(p) for p in batch_paths(batch))
