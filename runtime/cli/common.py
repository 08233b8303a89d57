"""What every command shares besides its options: the click settings and error reporting.

A :class:`~cover_engine.runtime.errors.CoverError` is the engine telling the user something
(a bad file, missing weights, an engine folder for another GPU): every command turns it into
``Error: <one line>`` on stderr and exit code 1 in :func:`cover_errors`, never a traceback.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import click

from cover_engine.runtime.errors import CoverError, one_line

__all__ = ["CONTEXT_SETTINGS", "command", "cover_errors", "one_line"]

#: ``-h`` as well as ``--help`` on every command.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def command(**kwargs):
    """``click.command`` with the shared settings."""
    return click.command(context_settings=CONTEXT_SETTINGS, **kwargs)


@contextlib.contextmanager
def cover_errors(hint: str = "") -> Iterator[None]:
    """Report a :class:`CoverError` raised inside as the command's one-line error (exit code 1);
    ``hint`` is appended (e.g. how to resume)."""
    try:
        yield
    except CoverError as exc:
        raise click.ClickException(one_line(exc) + hint) from None
