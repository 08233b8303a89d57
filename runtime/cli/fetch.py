"""``cover-fetch``: download COVER's two weight files into the cache and verify them.

Examples::

    cover-fetch                          # both files into $COVER_HOME (or the XDG cache)
    cover-fetch --check                  # hash what is there; download nothing
    cover-fetch --only cover --url cover=https://mirror.example/COVER.pth

Where files are looked for, how they are verified and how downloads resume:
:mod:`cover_engine.runtime.fetch`. Each file is reported on its own line; one bad file does not
stop the other, and the exit code is 1 if any failed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import click

from cover_engine.runtime.cli.common import command, cover_errors
from cover_engine.runtime.cli.options import CheckedPath, quiet_option
from cover_engine.runtime.errors import WeightsError
from cover_engine.runtime import fetch
from cover_engine.runtime.folders import folder_problem

__all__ = ["main"]


def _parse_urls(pairs: Sequence[str]) -> dict[str, list[str]]:
    """``NAME=URL`` options (NAME a key of ``fetch.FILES`` or a file name) to URL lists per key."""
    files = fetch.FILES
    by_name = {**{k: k for k in files}, **{wf.name: k for k, wf in files.items()}}
    urls: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not url or name not in by_name:
            raise click.BadParameter(
                f"'{pair}': expected NAME=URL with NAME one of {', '.join(by_name)}",
                param_hint="--url")
        urls.setdefault(by_name[name], []).append(url)
    return urls


@command()
@click.option("--dir", "directory", type=CheckedPath(file_okay=False, path_type=Path),
              help="Folder for the weight files [default: $COVER_HOME, else "
                   "$XDG_CACHE_HOME/cover-engine, else ~/.cache/cover-engine].")
@click.option("--only", type=click.Choice(sorted(fetch.FILES)), help="Fetch one file only.")
@click.option("--url", "url_pairs", multiple=True, metavar="NAME=URL",
              help="Download NAME (cover, clip or a file name) from URL instead of the published "
                   "addresses; repeat to give mirrors, tried in order.")
@click.option("--check", is_flag=True,
              help="Verify the sha256 of the files already there; download nothing.")
@quiet_option
def main(directory: Optional[Path], only: Optional[str], url_pairs: tuple[str, ...],
         check: bool, quiet: bool) -> None:
    """Download COVER's weights (COVER.pth and CLIP ViT-L/14) and verify their checksums.

    Prints NAME: PATH for each good file; exits non-zero if any file is missing or bad.
    """
    urls = _parse_urls(url_pairs)
    with cover_errors():  # an unusable folder fails here, once, before any download
        if directory is None:
            directory = fetch.checked_cache_dir(write=not check)
        else:
            problem = folder_problem(directory, write=not check)
            if problem:
                raise WeightsError(f"{directory}: {problem} (--dir)")
    failed = False
    for key, wf in fetch.FILES.items():
        if only not in (None, key):
            continue
        dest = directory / wf.name
        try:
            if check:
                problem = fetch.verify(dest, wf, full=True)
                if problem:
                    raise WeightsError(f"{problem}; run cover-fetch without --check to fetch it")
            else:
                fetch.download(wf, directory, urls=urls.get(key), progress=not quiet)
        except WeightsError as exc:  # the message may list one line per URL tried: keep them
            click.echo(f"error: {exc}", err=True)
            failed = True
            continue
        click.echo(f"{wf.name}: {dest}")
        if not quiet and wf.env and os.environ.get(wf.env):
            click.echo(f"note: ${wf.env} is set and takes precedence: {os.environ[wf.env]}",
                       err=True)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
