"""Every exception cover-engine raises on purpose, under one root, :class:`CoverError`.

One module so that a caller can see the whole tree at a glance and catch exactly what it means
to: ``CoverError`` for anything the engine reports, a subclass for one kind of cause. The
modules that raise these import them from here (and so still expose them by their old names,
e.g. ``gpu.cuda.GpuError``).

    CoverError
    +-- InputError            a user-supplied file (media, list, config) is unusable
    |   +-- ShortVideoError   a video decodes fewer frames than it claims
    +-- WeightsError          weight files missing, corrupted or mismatched
    +-- EngineError           an engine folder cannot be built, loaded or run
    +-- FitError              the metrics' logistic fit failed
    +-- GpuError              no usable GPU / CUDA stack, or a CUDA call failed
        +-- KernelCompileError  NVRTC rejected a kernel source
        +-- NvdecUnavailable    NVDEC cannot decode a file here (the CPU path takes it)
"""
from __future__ import annotations

__all__ = ["CoverError", "InputError", "ShortVideoError", "WeightsError", "EngineError",
           "FitError", "GpuError", "KernelCompileError", "NvdecUnavailable", "one_line"]


class CoverError(Exception):
    """Base class of every error cover-engine raises on purpose."""


class InputError(CoverError):
    """A user-supplied input file (video, image, list) is missing, unreadable or malformed."""


class ShortVideoError(InputError):
    """Decoding ended before a requested frame: the file has fewer frames than it claims."""

    def __init__(self, path, decoded: int, wanted: int):
        super().__init__(f"{path}: only {decoded} frames decode, frame {wanted} was requested")
        self.decoded = decoded


class WeightsError(CoverError):
    """Weight files are absent, unreachable, corrupted or do not match what the model needs."""


class EngineError(CoverError):
    """An exported engine cannot be built, loaded or run."""


class FitError(CoverError):
    """The 4-parameter logistic could not be fitted (too few points, no convergence, degenerate)."""


class GpuError(CoverError):
    """No usable GPU / CUDA stack here, or a CUDA call failed."""


class KernelCompileError(GpuError):
    """NVRTC rejected a kernel source; the message carries NVRTC's log."""


class NvdecUnavailable(GpuError):
    """NVDEC cannot decode this file here; the message is the one-line reason."""


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a report: our own errors as their message (they name the file and
    the cause), anything else prefixed with its type, since the type is then part of the news."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, CoverError) else f"{type(exc).__name__}: {text}"
