"""What every command shares besides its options: the click settings and error reporting.

A :class:`~cover_engine.runtime.errors.CoverError` is the engine telling the user something
(a bad file, missing weights, an engine folder for another GPU): every command turns it into
``Error: <one line>`` on stderr and exit code 1 in :func:`cover_errors`, never a traceback.
Anything else is a bug and keeps its traceback. A bad command line (an option out of range, a
path that is a symlink loop) is likewise one line, ``Error: <option and cause> (see CMD -h)``,
exit code 2: :class:`OneLineCommand`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import click

from cover_engine.runtime.errors import CoverError, one_line

__all__ = ["CONTEXT_SETTINGS", "OneLineCommand", "command", "cover_errors", "one_line"]

#: ``-h`` as well as ``--help`` on every command.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


#: Usage errors that print the help on purpose (click >= 8.2, ``no_args_is_help``).
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line_usage(exc: click.UsageError, name: str) -> click.UsageError:
    """The same usage error without the usage block: ``Error: <what> (see NAME -h)``."""
    short = click.UsageError(f"{' '.join(exc.format_message().split())} (see {name} -h)")
    short.exit_code = exc.exit_code
    return short


class OneLineCommand(click.Command):
    """A command whose usage errors are one line naming the argument and the cause (the usage
    text is one ``-h`` away), so a script's log shows exactly what was wrong."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _SHOWS_HELP:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc, info_name or self.name or "the command") from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line_usage(exc, ctx.command_path) from None


def command(**kwargs):
    """``click.command`` with the shared settings and one-line usage errors."""
    kwargs.setdefault("cls", OneLineCommand)
    return click.command(context_settings=CONTEXT_SETTINGS, **kwargs)


@contextlib.contextmanager
def cover_errors(hint: str = "") -> Iterator[None]:
    """Report a :class:`CoverError` raised inside as the command's one-line error (exit code 1);
    ``hint`` is appended (e.g. how to resume)."""
    try:
        yield
    except CoverError as exc:
        raise click.ClickException(one_line(exc) + hint) from None
