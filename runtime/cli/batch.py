"""``cover-batch``: score a catalogue on a Ray cluster into one Parquet file, resumably.

Examples::

    cover-batch videos/ --out scores.parquet                      # a local Ray, all cores
    cover-batch list.csv --out scores.parquet --csv scores.csv    # a CSV/Parquet list of paths
    cover-batch "/data/**/*.mp4" --out /data/scores.parquet --address auto \\
        --engines /shared/engines/cover-fp16 --gpus-per-worker 0.5  # a running cluster's GPUs

The work is done by ``cover_engine.runtime.batch`` (Ray Data actors, durable parts, the final
file); this module parses options, expands the inputs and reports.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable

import click

from cover_engine.runtime.cli.common import command, cover_errors
from cover_engine.runtime.cli.options import (CheckedPath, csv_option, quiet_option,
                                              scorer_options, writable_output)
from cover_engine.runtime.cli.run import expand_inputs
from cover_engine.runtime.errors import InputError

__all__ = ["main", "batch_inputs", "read_path_list"]

LIST_SUFFIXES = (".csv", ".parquet")
#: Failures listed by name at the end of a run (the rest are in the ``error`` column).
SHOW_FAILURES = 10


def read_path_list(path: Path) -> list[str]:
    """Paths from a CSV or Parquet list: its ``path`` column, or its only column.

    Relative paths are taken relative to the list's folder (a list travels with its dataset).
    """
    from cover_engine.runtime.batch.schema import require_pyarrow

    require_pyarrow()
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"path": "string"}, strings_can_be_null=False))
    except Exception as exc:  # pyarrow's own error types
        raise InputError(f"{path}: cannot read it as a list of paths "
                         f"({' '.join(str(exc).split())[:200]})") from None
    if "path" in table.column_names:
        column = table.column("path")
    elif table.num_columns == 1:
        column = table.column(0)
    else:
        raise InputError(f"{path}: a list of paths needs a 'path' column (or exactly one column); "
                         f"it has {', '.join(table.column_names)}")
    base = path.parent
    return [str(base / str(p)) if not os.path.isabs(str(p)) else str(p)
            for p in column.to_pylist() if p not in (None, "")]


def batch_inputs(args: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Absolute paths (in order, once each) from files, folders, globs and path lists."""
    media: list[str] = []
    for arg in args:
        if Path(arg).suffix.lower() in LIST_SUFFIXES and Path(arg).is_file():
            media.extend(read_path_list(Path(arg)))
        else:
            media.append(arg)
    files, missing = expand_inputs(media)
    seen: set[str] = set()
    paths = [p for p in (os.path.abspath(f) for f in files) if not (p in seen or seen.add(p))]
    return paths, missing


def _gigabytes(ctx, param, value):
    return None if value is None else value * 1024 ** 3


@command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", type=CheckedPath(dir_okay=False, path_type=Path), required=True,
              callback=writable_output,
              help="Results Parquet file; a rerun with the same --out resumes it.")
@csv_option("Also write the final results as CSV (same columns).")
@click.option("--address", metavar="auto|HOST:PORT",
              help="Join a running Ray cluster (default: start a local Ray for this run).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Scoring workers (default: as many as the CPUs/GPUs and memory hold).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0, max=8), default=0.0,
              show_default=True, help="GPU share of each worker (0.5: two per GPU); > 0 runs "
                                      "on CUDA.")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.1),
              help="CPU cores each worker reserves and uses as threads (default: one node's "
                   "cores shared out, else 1).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Files per task sent to a worker (results are saved per batch).")
@click.option("--worker-memory", type=click.FloatRange(min=0.1), callback=_gigabytes,
              metavar="GB", help="Host memory one worker needs, overriding the built-in figure "
                                 "(README: Memory per worker).")
@click.option("--fingerprint", type=click.Choice(["sampled", "full"]), default="sampled",
              show_default=True, help="How a resumed run recognises unchanged files: sampled "
                                      "blocks and size, or every byte.")
@click.option("--retry-errors", is_flag=True,
              help="On resume, score files that failed before again (default: only new or "
                   "changed files).")
@scorer_options
@quiet_option
def main(paths, out, csv_path, address, workers, gpus_per_worker, cpus_per_worker, batch_size,
         worker_memory, fingerprint, retry_errors, backend, engines, weights, clip_weights,
         config, device, precision, torch_mode, seed, clips, colour, random_weights, head,
         quiet):
    """Score every video or image in PATHS (files, folders, globs, or CSV/Parquet lists of
    paths) on Ray workers into one Parquet file, one row per input.

    Each batch of results is saved as it arrives, so a crash or Ctrl-C loses at most the
    batches in flight; rerunning the same command skips files already scored (same path and
    content) and finishes the rest. Files that cannot be scored are rows with the cause in the
    'error' column; the exit code is 1 if any input failed.
    """
    from cover_engine.runtime.batch.driver import BatchSettings, run_batch

    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with cover_errors():
        files, missing = batch_inputs(paths)
    for arg, why in missing:
        click.echo(f"cover-batch: {arg}: {why}", err=True)
    if not files:
        raise click.ClickException("no input files")
    scorer = dict(backend=backend, engines=engines, weights=weights, clip_weights=clip_weights,
                  config=config, device=device, precision=precision, torch_mode=torch_mode,
                  seed=seed, clips=clips, random_weights=random_weights, head=head, colour=colour)
    settings = BatchSettings(address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                             gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                             worker_memory=worker_memory, fingerprint=fingerprint,
                             retry_errors=retry_errors)
    with cover_errors():  # a failure mid-run says itself where the rows so far are kept
        summary = run_batch(files, out, scorer, settings, csv=csv_path,
                            progress=not quiet and sys.stderr.isatty(), log=log)

    failed = _failures(summary.out, files)
    click.echo(f"cover-batch: {summary.inputs} inputs: {summary.scored} scored, "
               f"{summary.failed} failed, {summary.skipped} already done; {summary.rows} rows in "
               f"{summary.out} ({summary.seconds:.1f} s"
               + (f", {summary.workers} workers)" if summary.workers else ")"), err=True)
    for why in failed[:SHOW_FAILURES]:
        click.echo(f"  {why}", err=True)
    if len(failed) > SHOW_FAILURES:
        click.echo(f"  ... and {len(failed) - SHOW_FAILURES} more (the 'error' column)", err=True)
    if summary.interrupted:
        sys.exit(130)
    if failed or missing:
        sys.exit(1)


def _failures(out: Path, files: list[str]) -> list[str]:
    """The error of every input of this run that has one in the final file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(out, columns=["path", "error"])
    mask = pc.and_(pc.is_valid(table.column("error")),
                   pc.is_in(table.column("path"), value_set=_array(files)))
    return table.filter(mask).column("error").to_pylist()


def _array(values):
    import pyarrow as pa

    return pa.array(values, pa.string())


if __name__ == "__main__":  # pragma: no cover
    main()
