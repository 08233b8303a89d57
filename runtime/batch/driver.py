"""``cover-batch``'s driver: plan the inputs, start or join Ray, stream rows into the store.

Ray Data does the scheduling (an actor pool of :class:`CoverScorer` workers, one block per
batch so every worker stays busy); this module only decides what to score, how many workers
the cluster holds (``resources.py``) and makes every returned batch durable before taking the
next (``store.py``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cover_engine.runtime.batch.resources import (GB, Node, WorkerNeeds, available_memory,
                                                  plan_workers, worker_memory)
from cover_engine.runtime.batch.store import ResultStore, plan
from cover_engine.runtime.constants import DEFAULT_COLOUR
from cover_engine.runtime.errors import CoverError

__all__ = ["BatchSettings", "BatchSummary", "run_batch", "require_ray", "prepare_scorer_kwargs",
           "connect_ray", "stop_local_ray", "configure_ray_data"]

Log = Callable[[str], None]

#: Object store of the local Ray a run starts: rows and paths are tiny, frames never travel.
LOCAL_OBJECT_STORE = 512 * 1024 ** 2


@dataclass
class BatchSettings:
    """How the work is spread; ``None`` means decided from the cluster's resources."""

    address: Optional[str] = None        # None: a local Ray for this run; "auto" or "HOST:PORT"
    workers: Optional[int] = None
    cpus_per_worker: Optional[float] = None
    gpus_per_worker: float = 0.0
    batch_size: int = 4
    worker_memory: Optional[float] = None  # bytes; None: resources.worker_memory's figure
    fingerprint: str = "sampled"
    retry_errors: bool = False
    tasks_per_worker: int = 2            # batches queued per worker (the at-risk ones on a crash)
    scorer_class: Optional[type] = None  # what each worker runs: CoverScorer or a subclass of it


@dataclass
class BatchSummary:
    """What one run did."""

    out: Path
    inputs: int
    skipped: int
    scored: int = 0
    failed: int = 0
    rows: int = 0                        # rows in the final file
    workers: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise CoverError(f"cover-batch needs Ray Data ({exc}): pip install 'cover-engine[ray]'") \
            from None
    return ray


def prepare_scorer_kwargs(scorer: dict[str, Any], log: Log,
                          gpus_per_worker: float = 0.0) -> tuple[dict[str, Any], float, str]:
    """What the workers get: absolute paths, the device, ``auto`` resolved here (the CPU probe
    runs once, on the driver), the engine folder made ready here (exported once if the cache
    lacks it); and the per-worker memory figure with its source."""
    from cover_engine.runtime.constants import OFFICIAL_VIEWS
    from cover_engine.runtime.scoring import auto_backend

    kw = {k: (str(Path(v).absolute()) if isinstance(v, Path) else v) for k, v in scorer.items()}
    if gpus_per_worker and not str(kw.get("device", "cpu")).startswith("cuda"):
        kw["device"] = "cuda"
    device = kw.get("device", "cpu")
    kw["backend"] = backend = auto_backend(
        kw.get("backend", "auto"), engines=kw.get("engines"), device=device,
        config=kw.get("config"), log=log, weights=kw.get("weights"),
        clip_weights=kw.get("clip_weights"), random_weights=kw.get("random_weights", False),
        head=kw.get("head"))
    if backend != "torch":
        from cover_engine.runtime.engines.manifest import load_manifest

        if not kw.get("engines"):
            from cover_engine.runtime.scoring import ensure_cached_engines

            kw["engines"] = str(ensure_cached_engines(
                weights=kw.get("weights"), clip_weights=kw.get("clip_weights"),
                config=kw.get("config"), random_weights=kw.get("random_weights", False), log=log))
        from cover_engine.runtime.engines.ort_runner import graph_bytes

        manifest = load_manifest(kw["engines"])  # fail here, once, not in every worker
        size = graph_bytes(manifest)
        official = manifest.specs == dict(OFFICIAL_VIEWS)
    else:
        official = kw.get("config") is None
        size = sum(Path(kw[k]).stat().st_size for k in ("weights", "clip_weights")
                   if kw.get(k) and Path(kw[k]).is_file())
    memory, source = worker_memory(backend, official=official, graph_bytes=size, device=device)
    return kw, memory, source


def connect_ray(ray, address: Optional[str], log: Log) -> bool:
    """Join ``address`` or start a local Ray; True when this run started it (and stops it)."""
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)  # local token notice
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CoverError(f"cannot join the Ray cluster at {address}: "
                             f"{' '.join(str(exc).split())[:300]}") from None
        return False
    # "local": a new instance even where another one runs (no address would join that one)
    ray.init(address="local", num_cpus=os.cpu_count() or 1,
             object_store_memory=LOCAL_OBJECT_STORE, **common)
    return True


def stop_local_ray(ray) -> None:
    """``ray.shutdown()`` for the Ray a run started, without the second it stalls on.

    Ray stops the raylet and the GCS first, then the autoscaler monitor, whose SIGTERM handler
    reports to the GCS that is already gone; Ray waits out its one-second grace for it on every
    run (Ray 2.60: shutdown 1.35 s, 0.1 to 0.35 s with the monitor stopped first,
    BENCHMARKS.md). A one-node Ray started for one run never autoscales, so its monitor is
    killed before the rest.
    """
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    for info in (getattr(node, "all_processes", None) or {}).get("monitor", ()):
        with contextlib.suppress(Exception):  # Ray's internals moved: only the stall comes back
            info.process.kill()
    ray.shutdown()


def configure_ray_data() -> None:
    """Ray Data's settings for a cover-batch run (``bench.ray_floor`` uses the same)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # our bar, summary and error line
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # A worker process that dies (a decoder crash on a hostile file, the kernel's OOM killer)
    # fails the batches it held; by default Ray Data would retry them forever on new actors.
    # Here the actor is replaced, its batches are left out, and their files are scored again
    # one at a time, so the one file to blame becomes an error row and the rest score.
    ctx.max_errored_blocks = -1


def _nodes(ray, local: bool) -> list[Node]:
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        memory = float(res.get("memory", 0.0))
        if local:  # the machine is shared: what is free now, not what was free at start
            now = available_memory()
            memory = min(memory, now) if now else memory
        nodes.append(Node(name=n.get("NodeManagerAddress", "?"), cpus=float(res.get("CPU", 0)),
                          gpus=float(res.get("GPU", 0)), memory=memory))
    return nodes


def _cause(exc: BaseException) -> str:
    """One line for a Ray failure: the last line of the first traceback in its chain (Ray puts
    the worker's traceback in the message), our own errors as their message."""
    from cover_engine.runtime import errors

    seen, chain, e = set(), [], exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    for e in chain:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if not lines:
            continue
        match = re.match(r"^(?:[\w.]+\.)?(\w+): (.*)$", lines[-1])
        if match and isinstance(getattr(errors, match.group(1), None), type):
            return match.group(2)[:500]  # a CoverError raised in a worker: its message
        return lines[-1][:500]
    return type(exc).__name__


def run_batch(paths: Sequence[str], out, scorer: dict[str, Any], settings: BatchSettings, *,
              csv=None, progress: bool = False, log: Log = print) -> BatchSummary:
    """Score ``paths`` (absolute) into ``out``; resumes what an earlier run left there.

    Whatever happens (done, Ctrl-C, a failed cluster), the rows written so far end up in a whole
    final file (a SIGKILL leaves them in the parts, for the next run to pick up).
    """
    started = time.perf_counter()
    store = ResultStore(out, csv=csv)
    summary, final = _locked_run(store, paths, scorer, settings, progress, log)
    summary.rows = final.num_rows
    summary.seconds = time.perf_counter() - started
    return summary


def _locked_run(store: ResultStore, paths: Sequence[str], scorer: dict[str, Any],
                settings: BatchSettings, progress: bool, log: Log):
    with store.lock():
        loaded = store.load()
        for note in loaded.torn:
            log(f"cover-batch: {note}")
        todo, skipped = plan(list(paths), loaded.done(), retry_errors=settings.retry_errors)
        summary = BatchSummary(out=store.out, inputs=len(paths), skipped=skipped)
        if skipped:
            log(f"cover-batch: {skipped} of {len(paths)} already scored in {store.out.name} "
                f"(same path and content); scoring the other {len(todo)}")
        try:
            if todo:
                _score(todo, store, scorer, settings, summary, progress, log)
        finally:
            if summary.interrupted:
                log("cover-batch: interrupted; keeping what is done (rerun to continue)")
            final = store.load().table
            if final.num_rows or store.out.exists():  # a run refused at the start writes nothing
                store.finalize(final)
    return summary, final


def _score(todo: list[str], store: ResultStore, scorer: dict[str, Any], settings: BatchSettings,
           summary: BatchSummary, progress: bool, log: Log) -> None:
    kw, memory, source = prepare_scorer_kwargs(scorer, log, settings.gpus_per_worker)
    if settings.worker_memory:
        memory, source = settings.worker_memory, "--worker-memory"
    ray = require_ray()
    started_here = connect_ray(ray, settings.address, log)
    try:
        _run_on_ray(ray, todo, store, kw, memory, source, settings, summary, progress,
                    local=started_here, log=log)
    finally:
        if started_here:
            stop_local_ray(ray)


def _run_on_ray(ray, todo, store, kw, memory, source, settings, summary, progress, *, local,
                log) -> None:
    import ray.data

    from cover_engine.runtime.batch.scorer import CoverScorer

    nodes = _nodes(ray, local)
    gpus = settings.gpus_per_worker
    if gpus and not any(n.gpus for n in nodes):
        raise CoverError(f"--gpus-per-worker {gpus:g} asked for, but no Ray node has a GPU")
    cpus = settings.cpus_per_worker or 1.0
    workers = plan_workers(nodes, WorkerNeeds(cpus=cpus, gpus=gpus, memory=memory),
                           settings.workers, source)
    workers = max(1, min(workers, math.ceil(len(todo) / settings.batch_size)))
    if settings.cpus_per_worker is None and not gpus and len(nodes) == 1:
        cpus = max(1.0, math.floor(nodes[0].cpus / workers))  # a lone node's cores, shared out
    summary.workers = workers
    kw["threads"] = int(cpus)
    kw["fingerprint"] = settings.fingerprint
    log(f"cover-batch: {len(todo)} files on {workers} worker(s) ({cpus:g} CPU, {gpus:g} GPU, "
        f"{memory / GB:.1f} GB each)")

    configure_ray_data()

    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="file", file=sys.stderr, dynamic_ncols=True)
    stream = _Stream(ray, kw, memory, cpus, gpus, store.writer(), summary, bar,
                     settings.scorer_class or CoverScorer)
    try:
        stream.run(todo, settings.batch_size, workers, settings.tasks_per_worker)
        lost = [p for p in todo if p not in stream.seen]
        if lost and not summary.interrupted:
            log(f"cover-batch: a worker died while scoring a batch; scoring its {len(lost)} "
                "file(s) again, one at a time")
            stream.run(lost, 1, min(workers, len(lost)), 1)
            stream.write_died([p for p in lost if p not in stream.seen])
    except CoverError:
        raise
    except Exception as exc:  # Ray's wrapped worker failures: one line, rows kept
        raise CoverError(f"the workers failed: {_cause(exc)} (the {summary.scored + summary.failed} "
                         f"rows written so far are kept in {store.parts_dir})") from None
    finally:
        stream.writer.close()
        if bar is not None:
            bar.close()


#: The cause recorded for a file whose worker process died while scoring it alone.
WORKER_DIED = ("the worker process died while scoring this file (a crash in decoding or "
               "inference, or out of memory)")


class _Stream:
    """One pass of Ray Data over some paths: rows made durable as they arrive, paths seen."""

    def __init__(self, ray, kw, memory, cpus, gpus, writer, summary, bar, scorer_class):
        self.ray, self.kw, self.memory, self.cpus, self.gpus = ray, kw, memory, cpus, gpus
        self.writer, self.summary, self.bar = writer, summary, bar
        self.scorer_class = scorer_class
        self.seen: set[str] = set()

    def run(self, paths: list[str], batch_size: int, workers: int, tasks_per_worker: int) -> None:
        ray = self.ray
        blocks = math.ceil(len(paths) / batch_size)
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        with warnings.catch_warnings():  # Ray 2.60 names no parameter for these two yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            results = ds.map_batches(
                self.scorer_class, fn_constructor_kwargs=self.kw, batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(
                    size=workers, max_tasks_in_flight_per_actor=tasks_per_worker),
                num_cpus=self.cpus, num_gpus=self.gpus or None, memory=self.memory,
                max_restarts=-1, max_task_retries=0)  # new actors; failed batches not retried
        try:
            for table in results.iter_batches(batch_size=None, batch_format="pyarrow",
                                              prefetch_batches=0):
                self.add(table)
        except KeyboardInterrupt:
            self.summary.interrupted = True

    def add(self, table) -> None:
        self.writer.write(table)
        self.seen.update(table.column("path").to_pylist())
        failed = table.num_rows - table.column("error").null_count
        self.summary.scored += table.num_rows - failed
        self.summary.failed += failed
        if self.bar is not None:
            self.bar.update(table.num_rows)
            self.bar.set_postfix(failed=self.summary.failed, refresh=False)

    def write_died(self, paths: list[str]) -> None:
        if paths:
            from cover_engine.runtime.batch.schema import rows_to_table

            self.add(rows_to_table(
                {"path": p, "backend": str(self.kw.get("backend", "auto")),
                 "colour": str(self.kw.get("colour", DEFAULT_COLOUR)), "seconds": 0.0,
                 "error": f"{p}: {WORKER_DIED}"} for p in paths))
