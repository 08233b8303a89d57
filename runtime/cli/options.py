"""Option groups shared by the commands, declared once.

* :func:`weight_options` -- which model: ``--weights``, ``--clip-weights`` (each also from its
  environment variable), ``--config``, ``--random-weights``. ``cover-bench`` takes the variant
  ``random_default=True``: random weights unless ``--weights`` is given (speed does not depend on
  the values), so there ``--weights`` has no environment variable and no ``--random-weights``.
* :func:`scoring_options` -- how files are scored: ``--backend``, ``--engines``, ``--device``,
  ``--precision``, ``--seed``, ``--clips``. :func:`scorer_options` is both groups and
  ``--colour`` (the YUV -> RGB conversion, :data:`~.constants.COLOUR_MODES`).
* Output: :func:`csv_option`, :func:`report_options` (``--json FILE``, ``--plot FILE``; a plot
  is refused up front when matplotlib is missing), :func:`quiet_option`.

Each group is a decorator; the options arrive as keyword arguments named as below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from cover_engine.runtime.constants import CLIP_WEIGHTS, COLOUR_MODES, COVER_WEIGHTS, DEFAULT_COLOUR

__all__ = ["weight_options", "scoring_options", "scorer_options", "colour_option", "csv_option",
           "report_options",
           "quiet_option", "BACKEND_CHOICES"]

#: ``--backend`` values; auto = TensorRT if usable, else ONNX Runtime.
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")

Decorator = Callable[[Callable], Callable]


def _group(*options: Decorator) -> Decorator:
    """One decorator applying ``options`` so that ``--help`` lists them in the order given."""
    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def weight_options(*, random_default: bool = False) -> Decorator:
    """``--weights``, ``--clip-weights``, ``--config`` and (unless ``random_default``)
    ``--random-weights``: arguments ``weights``, ``clip_weights``, ``config``, ``random_weights``."""
    if random_default:
        weights = click.option(
            "--weights", type=click.Path(dir_okay=False, path_type=Path),
            help=f"{COVER_WEIGHTS.name}: measure the real model (default: seeded random weights).")
    else:
        weights = click.option(
            "--weights", type=click.Path(dir_okay=False, path_type=Path), envvar=COVER_WEIGHTS.env,
            help=f"{COVER_WEIGHTS.name} (default: ${COVER_WEIGHTS.env}, then the cover-fetch "
                 "cache).")
    options = [
        weights,
        click.option(
            "--clip-weights", type=click.Path(dir_okay=False, path_type=Path),
            envvar=CLIP_WEIGHTS.env,
            help=f"OpenAI {CLIP_WEIGHTS.name}{', with --weights' if random_default else ''} "
                 f"(default: ${CLIP_WEIGHTS.env}, then the cache)."),
        click.option(
            "--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Model config JSON for non-official sizes (default: the official sizes"
                 + (")." if random_default else "; its weights must be named).")),
    ]
    if not random_default:
        options.append(click.option(
            "--random-weights", is_flag=True,
            help="Seeded random weights instead of the official ones: plumbing and speed checks "
                 "only, the scores mean nothing."))
    return _group(*options)


scoring_options: Decorator = _group(
    click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto",
                 show_default=True,
                 help="Inference backend; auto = TensorRT if usable, else ONNX Runtime."),
    click.option("--engines", type=click.Path(file_okay=False, path_type=Path),
                 help="Folder written by cover-export (default: a cached export of the weights)."),
    click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]."),
    click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
                 show_default=True, help="Torch backend precision (engines carry their own)."),
    click.option("--seed", type=int, default=None,
                 help="Random temporal/spatial offsets from this seed (default: deterministic "
                      "middle of each range)."),
    click.option("--clips", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Average the scores of N sampled clips."),
)
"""``--backend``, ``--engines``, ``--device``, ``--precision``, ``--seed``, ``--clips``."""

#: ``--colour`` (argument ``colour``): which YUV -> RGB conversion scores are made with.
colour_option: Decorator = click.option(
    "--colour", type=click.Choice(list(COLOUR_MODES)), default=DEFAULT_COLOUR, show_default=True,
    help="YUV -> RGB conversion: decord = upstream's decoder bit for bit (rotation metadata "
         "applied as decord does); exact = the signalled matrix in float32, nearest chroma, "
         "rotation not applied.")

#: Everything :func:`~cover_engine.runtime.scoring.make_scorer` takes from a command line.
scorer_options: Decorator = _group(weight_options(), scoring_options, colour_option)


def csv_option(help: str) -> Decorator:
    """``--csv FILE`` (argument ``csv_path``)."""
    return click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
                        help=help)


def _needs_matplotlib(ctx: click.Context, param: click.Parameter, value):
    if value is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(f"{param.opts[0]} needs matplotlib: "
                                   "pip install 'cover-engine[plot]'") from None
    return value


def report_options(*, json_help: str, plot_help: str) -> Decorator:
    """``--json FILE`` and ``--plot FILE`` (arguments ``json_path``, ``plot_path``)."""
    return _group(
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help=json_help),
        click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
                     callback=_needs_matplotlib, help=plot_help + " (PNG; needs matplotlib)."),
    )


quiet_option: Decorator = click.option("-q", "--quiet", is_flag=True,
                                       help="No progress bars or notes; errors only.")
