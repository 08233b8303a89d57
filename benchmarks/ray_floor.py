"""The least a ``cover-batch`` run with its own Ray can cost: the same Ray, the same Ray Data
pipeline over the same paths, a worker that scores nothing.

    python -m cover_engine.bench.ray_floor FOLDER --workers 2 --batch-size 4

Starts a local Ray as ``cover-batch`` does (``driver.connect_ray``), streams one row per file of
``FOLDER`` through ``map_batches`` with an actor pool of ``--workers`` no-op workers of one CPU
each, and stops Ray as ``cover-batch`` does. ``bench.batch_vs_run --ray-floor`` times this
command beside ``cover-run`` and ``cover-batch``: whatever ``cover-batch`` takes beyond it is
scoring.
"""
from __future__ import annotations

from pathlib import Path

import click

__all__ = ["NoOpWorker", "run_floor"]


class NoOpWorker:
    """Returns its batch unchanged: Ray Data's cost with none of ours."""

    def __call__(self, batch):
        return batch


def run_floor(paths: list[str], workers: int, batch_size: int) -> int:
    """Rows streamed back through a no-op actor pool on a local Ray started and stopped here."""
    import ray
    import ray.data

    from cover_engine.runtime.batch.driver import configure_ray_data, connect_ray, stop_local_ray

    started = connect_ray(ray, None, lambda msg: None)
    try:
        configure_ray_data()
        blocks = -(-len(paths) // batch_size)
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        rows = 0
        for table in ds.map_batches(
                NoOpWorker, batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=workers)).iter_batches(
                batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            rows += table.num_rows
        return rows
    finally:
        if started:
            stop_local_ray(ray)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True)
def main(folder: Path, workers: int, batch_size: int) -> None:
    """Stream FOLDER's files through Ray Data with no-op workers (cover-batch's floor)."""
    paths = sorted(str(p) for p in folder.iterdir() if p.is_file())
    rows = run_floor(paths, workers, batch_size)
    if rows != len(paths):
        raise click.ClickException(f"{rows} rows came back for {len(paths)} files")
    click.echo(f"{rows} rows")


if __name__ == "__main__":  # pragma: no cover
    main()
