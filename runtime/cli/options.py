"""Option groups shared by the commands, declared once.

* :func:`weight_options` -- which model: ``--weights``, ``--clip-weights`` (each also from its
  environment variable), ``--config``, ``--random-weights``. ``cover-bench`` takes the variant
  ``random_default=True``: random weights unless ``--weights`` is given (speed does not depend on
  the values), so there ``--weights`` has no environment variable and no ``--random-weights``.
* :func:`scoring_options` -- how files are scored: ``--backend``, ``--engines``, ``--device``,
  ``--precision``, ``--torch-mode``, ``--seed``, ``--clips``. :func:`scorer_options` is both
  groups, :func:`head_option` and ``--colour`` (the YUV -> RGB conversion,
  :data:`~.constants.COLOUR_MODES`).
* :func:`head_option` -- ``--head FILE``: a ``cover-train`` head file in place of the heads
  of ``--weights`` (cover-run, cover-eval, cover-export).
* :func:`label_options` -- a labelled set: ``--labels``, ``--root``, ``--format``,
  ``--name-column``, ``--mos-column`` (cover-eval, cover-train).
* Output: :func:`csv_option`, :func:`report_options` (``--json FILE``, ``--plot FILE``; a plot
  is refused up front when matplotlib is missing), :func:`quiet_option`.
* Meaning of scores: :func:`calibration_option` (``--calibration FILE``, all three commands that
  take one), :func:`percentile_option` (``--percentile-of FILE``), :data:`timeline_options`
  (``--segments SECONDS``, ``--timeline-plot FILE``).

Each group is a decorator; the options arrive as keyword arguments named as below.

Values are checked as they are parsed, so a bad command line fails in one line before any work:
paths with :class:`CheckedPath` (a symlink loop, a NUL byte or a name too long is named as such,
not as "does not exist"), devices with :class:`Device` (``cpu``, ``cuda``, ``cuda:N``), seeds and
clip counts by range, and the combinations no backend can honour (``--backend tensorrt --device
cpu``; ``--precision`` other than fp32 for a backend whose engines carry their own) by
:func:`scoring_options` before the command body runs.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable

import click
from click.core import ParameterSource

from cover_engine.runtime.constants import (CLIP_WEIGHTS, COLOUR_MODES, COVER_WEIGHTS,
                                            DEFAULT_COLOUR, MAX_CLIPS, MAX_SEED, TORCH_MODES)
from cover_engine.runtime.folders import path_problem

__all__ = ["weight_options", "scoring_options", "scorer_options", "colour_option", "head_option",
           "label_options", "csv_option", "report_options", "quiet_option", "writable_output",
           "calibration_option", "percentile_option", "timeline_options", "BACKEND_CHOICES",
           "CheckedPath", "Device"]

#: ``--backend`` values; auto = TensorRT if usable, else the faster of ONNX Runtime and torch
#: on a CPU (``scoring.auto_backend``).
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")

Decorator = Callable[[Callable], Callable]


class CheckedPath(click.Path):
    """``click.Path`` that first names what makes a path unusable at all: a symlink loop, a NUL
    byte, a name too long, a file used as a folder (click would say "does not exist")."""

    def convert(self, value, param, ctx):
        if isinstance(value, (str, Path)) and str(value) not in ("-", ""):
            problem = path_problem(value)
            if problem:
                self.fail(f"{value}: {problem}", param, ctx)
        return super().convert(value, param, ctx)


class Device(click.ParamType):
    """``cpu``, ``cuda`` or ``cuda:N`` (and ``auto`` where a command picks for itself): anything
    else is refused here, not deep inside a backend (torch would raise, ONNX Runtime would have
    run on the CPU)."""

    name = "device"
    _PATTERN = re.compile(r"^(cpu|cuda(:(0|[1-9][0-9]{0,2}))?)$")

    def __init__(self, allow_auto: bool = False):
        self.allow_auto = allow_auto

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if (self.allow_auto and text == "auto") or self._PATTERN.match(text):
            return text
        choices = "auto, cpu, cuda or cuda:N" if self.allow_auto else "cpu, cuda or cuda:N"
        self.fail(f"{value!r} is not a device; use {choices} (N: the GPU's index)", param, ctx)


def _group(*options: Decorator) -> Decorator:
    """One decorator applying ``options`` so that ``--help`` lists them in the order given."""
    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def weight_options(*, random_default: bool = False, allow_random: bool = True) -> Decorator:
    """``--weights``, ``--clip-weights``, ``--config`` and (unless ``random_default``, or
    ``allow_random`` is False as for cover-train) ``--random-weights``: arguments ``weights``,
    ``clip_weights``, ``config``, ``random_weights``."""
    if random_default:
        weights = click.option(
            "--weights", type=CheckedPath(dir_okay=False, path_type=Path),
            help=f"{COVER_WEIGHTS.name}: measure the real model (default: seeded random weights).")
    else:
        weights = click.option(
            "--weights", type=CheckedPath(dir_okay=False, path_type=Path), envvar=COVER_WEIGHTS.env,
            help=f"{COVER_WEIGHTS.name} (default: ${COVER_WEIGHTS.env}, then the cover-fetch "
                 "cache).")
    options = [
        weights,
        click.option(
            "--clip-weights", type=CheckedPath(dir_okay=False, path_type=Path),
            envvar=CLIP_WEIGHTS.env,
            help=f"OpenAI {CLIP_WEIGHTS.name}{', with --weights' if random_default else ''} "
                 f"(default: ${CLIP_WEIGHTS.env}, then the cache)."),
        click.option(
            "--config", type=CheckedPath(exists=True, dir_okay=False, path_type=Path),
            help="Model config JSON for non-official sizes (default: the official sizes"
                 + (")." if random_default else "; its weights must be named).")),
    ]
    if not random_default and allow_random:
        options.append(click.option(
            "--random-weights", is_flag=True,
            help="Seeded random weights instead of the official ones: plumbing and speed checks "
                 "only, the scores mean nothing."))
    return _group(*options)


def _check_scoring(ctx: click.Context, options: dict) -> None:
    """Combinations of scoring options that no backend can honour, refused before any work."""
    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)

    backend, device = options.get("backend"), options.get("device")
    if backend == "tensorrt" and device == "cpu" and given("device"):
        raise click.BadParameter("--backend tensorrt runs on an NVIDIA GPU; use --device cuda[:N] "
                                 "or --backend onnxruntime", param_hint="'--device'")
    precision = options.get("precision")
    if precision not in (None, "fp32") and backend != "torch" and given("precision"):
        raise click.BadParameter(
            f"{precision} applies to --backend torch; engine folders carry their own precision "
            "(make an fp16 one with `cover-export --precision fp16`)", param_hint="'--precision'")
    mode = options.get("torch_mode")
    if mode not in (None, "eager") and backend != "torch":
        raise click.BadParameter(f"--torch-mode {mode} applies to --backend torch, not {backend}",
                                 param_hint="'--torch-mode'")
    if mode and "cuda-graphs" in mode and not str(device).startswith("cuda"):
        raise click.BadParameter(f"{mode} needs a CUDA device (--device cuda[:N])",
                                 param_hint="'--torch-mode'")


def _checked(check: Callable[[click.Context, dict], None]) -> Decorator:
    """Run ``check(ctx, options)`` on the parsed options before the command body."""
    def wrap(command: Callable) -> Callable:
        @functools.wraps(command)
        def checked(*args, **kwargs):
            check(click.get_current_context(), kwargs)
            return command(*args, **kwargs)
        return checked
    return wrap


scoring_options: Decorator = _group(
    _checked(_check_scoring),
    click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto",
                 show_default=True,
                 help="Inference backend; auto = TensorRT if usable, else ONNX Runtime, or on a "
                      "CPU without --engines torch where a one-time probe finds it faster."),
    click.option("--engines", type=CheckedPath(file_okay=False, path_type=Path),
                 help="Folder written by cover-export (default: a cached export of the weights)."),
    click.option("--device", type=Device(), default="cpu", show_default=True,
                 help="cpu, cuda or cuda:N; a GPU that is asked for and cannot be used is an "
                      "error, never a silent CPU run."),
    click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
                 show_default=True, help="Torch backend precision (engines carry their own)."),
    click.option("--torch-mode", type=click.Choice(TORCH_MODES), default="eager",
                 show_default=True,
                 help="Torch backend: torch.compile the model, and/or replay it as one CUDA "
                      "graph per input shape (CUDA only)."),
    click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
                 help="Random temporal/spatial offsets from this seed, 0.."
                      f"{MAX_SEED} (default: deterministic middle of each range)."),
    click.option("--clips", type=click.IntRange(1, MAX_CLIPS), default=1, show_default=True,
                 help=f"Average the scores of N sampled clips (at most {MAX_CLIPS})."),
)
"""``--backend``, ``--engines``, ``--device``, ``--precision``, ``--torch-mode``, ``--seed``,
``--clips``."""

#: ``--colour`` (argument ``colour``): which YUV -> RGB conversion scores are made with.
colour_option: Decorator = click.option(
    "--colour", type=click.Choice(list(COLOUR_MODES)), default=DEFAULT_COLOUR, show_default=True,
    help="YUV -> RGB conversion: decord = upstream's decoder bit for bit (rotation metadata "
         "applied as decord does); exact = the signalled matrix in float32, nearest chroma, "
         "rotation not applied.")

#: ``--head FILE`` (argument ``head``): a cover-train head file.
head_option: Decorator = click.option(
    "--head", type=CheckedPath(exists=True, dir_okay=False, path_type=Path),
    help="Head file from cover-train: its gates and heads replace those of --weights (refused "
         "if trained on other weights or another config).")

#: Everything :func:`~cover_engine.runtime.scoring.make_scorer` takes from a command line.
scorer_options: Decorator = _group(weight_options(), head_option, scoring_options, colour_option)


def label_options(*, required: bool = True,
                  labels_help: str = "Label file: upstream 'filename,a,t,mos' lines, or a CSV "
                                     "with a header.") -> Decorator:
    """A labelled set: ``--labels``, ``--root``, ``--format``, ``--name-column``,
    ``--mos-column`` (arguments ``labels_path``, ``root``, ``fmt``, ``name_column``,
    ``mos_column``)."""
    from cover_engine.runtime.eval.labels import FORMATS

    return _group(
        click.option("--labels", "labels_path", required=required,
                     type=CheckedPath(exists=True, dir_okay=False, path_type=Path),
                     help=labels_help),
        click.option("--root", default=".", show_default=True,
                     type=CheckedPath(file_okay=False, path_type=Path),
                     help="Folder the label file's names are relative to."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto",
                     show_default=True, help="Label format."),
        click.option("--name-column",
                     help="CSV column with the file names (default: name, filename, file, ...)."),
        click.option("--mos-column",
                     help="CSV column with the MOS (default: mos, mosfull, score, label)."),
    )


def csv_option(help: str) -> Decorator:
    """``--csv FILE`` (argument ``csv_path``)."""
    return click.option("--csv", "csv_path", type=CheckedPath(dir_okay=False, path_type=Path),
                        help=help)


def _needs_matplotlib(ctx: click.Context, param: click.Parameter, value):
    if value is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(f"{param.opts[0]} needs matplotlib: "
                                   "pip install 'cover-engine[plot]'") from None
    return value


def writable_output(ctx: click.Context, param: click.Parameter, value):
    """Callback for an output file option: its folder must exist and take files, and the path
    must be absent or a writable file -- checked when the command line is read, so a report
    cannot fail only after the work it reports on."""
    if value is not None:
        from cover_engine.runtime.durable import check_output_file
        from cover_engine.runtime.errors import OutputError

        try:
            check_output_file(value)
        except OutputError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _plot_output(ctx: click.Context, param: click.Parameter, value):
    return writable_output(ctx, param, _needs_matplotlib(ctx, param, value))


def report_options(*, json_help: str, plot_help: str) -> Decorator:
    """``--json FILE`` and ``--plot FILE`` (arguments ``json_path``, ``plot_path``); both are
    checked to be writable when the command line is parsed."""
    return _group(
        click.option("--json", "json_path", type=CheckedPath(dir_okay=False, path_type=Path),
                     callback=writable_output, help=json_help),
        click.option("--plot", "plot_path", type=CheckedPath(dir_okay=False, path_type=Path),
                     callback=_plot_output, help=plot_help + " (PNG; needs matplotlib)."),
    )


quiet_option: Decorator = click.option("-q", "--quiet", is_flag=True,
                                       help="No progress bars or notes; errors only.")


def calibration_option(help: str) -> Decorator:
    """``--calibration FILE`` (argument ``calibration``), from ``cover-eval --fit-calibration``."""
    return click.option("--calibration", type=CheckedPath(dir_okay=False, path_type=Path),
                        help=help)


def percentile_option(help: str) -> Decorator:
    """``--percentile-of FILE`` (argument ``percentile_of``): a reference distribution."""
    return click.option("--percentile-of", "percentile_of",
                        type=CheckedPath(dir_okay=False, path_type=Path), help=help)


def _positive_seconds(ctx: click.Context, param: click.Parameter, value):
    if value is None:
        return None
    from fractions import Fraction

    try:
        seconds = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"{value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise click.BadParameter("must be more than 0 seconds")
    return seconds


#: ``--segments SECONDS`` (argument ``segments``: an exact Fraction or None) and
#: ``--timeline-plot FILE`` (argument ``timeline_plot``; refused up front without matplotlib).
timeline_options: Decorator = _group(
    click.option("--segments", metavar="SECONDS", callback=_positive_seconds,
                 help="Score consecutive windows of SECONDS (each sampled as one COVER clip); "
                      "the file's scores become the mean of its windows, and JSON gets "
                      "'segments', --csv a NAME.segments.csv beside it."),
    click.option("--timeline-plot", "timeline_plot", callback=_plot_output,
                 type=CheckedPath(dir_okay=False, path_type=Path),
                 help="With --segments: plot each file's window scores over time, worst windows "
                      "marked (PNG; needs matplotlib)."),
)
