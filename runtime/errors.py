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
    +-- OutputError           a file the engine writes (scores CSV, report) cannot be written
    +-- FitError              the metrics' logistic fit failed
    +-- GpuError              no usable GPU / CUDA stack, or a CUDA call failed
        +-- KernelCompileError  NVRTC rejected a kernel source
        +-- NvdecUnavailable    NVDEC cannot decode a file here (the CPU path takes it)

Below them, three internal signals that never reach a user as such: the code that raises them
is called by code that catches them and reports a :class:`CoverError` naming the file
(:class:`NotRegularFile` is an ``OSError`` and :class:`JSONRefused` a ``ValueError`` so that
the usual handlers of those see them too).
"""
from __future__ import annotations

from typing import Optional

__all__ = ["CoverError", "InputError", "ShortVideoError", "WeightsError", "EngineError", "OutputError",
           "FitError", "GpuError", "KernelCompileError", "NvdecUnavailable", "one_line",
           "NotRegularFile", "JSONRefused", "ArchiveError",
           "CUDA_OUT_OF_MEMORY", "CUDA_STICKY"]


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


class OutputError(CoverError):
    """A file the engine writes (a scores CSV, a report, a plot) cannot be created or written,
    or is not ours to write into (another kind of file, a FIFO, a folder). The message names the
    path and the cause; whatever was written before is intact."""


class FitError(CoverError):
    """The 4-parameter logistic could not be fitted (too few points, no convergence, degenerate)."""


class GpuError(CoverError):
    """No usable GPU / CUDA stack here, or a CUDA call failed.

    ``status`` is the CUDA error's name (``cudaErrorInvalidValue``, ...) when a call failed, so
    callers can tell a refusal of one request from a device that is out of memory or broken.
    """

    def __init__(self, message: str, status: Optional[str] = None):
        super().__init__(message)
        self.status = status

    @property
    def out_of_memory(self) -> bool:
        return self.status in CUDA_OUT_OF_MEMORY

    @property
    def sticky(self) -> bool:
        """The CUDA context is unusable from now on (every later call fails the same way)."""
        return self.status in CUDA_STICKY


#: CUDA statuses meaning "no device memory left" (runtime and driver names).
CUDA_OUT_OF_MEMORY = frozenset({"cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY"})
#: CUDA statuses after which the context is corrupt: the process can no longer use the GPU.
CUDA_STICKY = frozenset({
    "cudaErrorIllegalAddress", "cudaErrorLaunchFailure", "cudaErrorHardwareStackError",
    "cudaErrorIllegalInstruction", "cudaErrorMisalignedAddress", "cudaErrorInvalidAddressSpace",
    "cudaErrorInvalidPc", "cudaErrorECCUncorrectable", "cudaErrorAssert",
    "cudaErrorContextIsDestroyed", "cudaErrorLaunchTimeout",
    "CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED", "CUDA_ERROR_HARDWARE_STACK_ERROR",
    "CUDA_ERROR_ILLEGAL_INSTRUCTION", "CUDA_ERROR_MISALIGNED_ADDRESS", "CUDA_ERROR_INVALID_PC",
    "CUDA_ERROR_ECC_UNCORRECTABLE", "CUDA_ERROR_ASSERT", "CUDA_ERROR_CONTEXT_IS_DESTROYED",
    "CUDA_ERROR_LAUNCH_TIMEOUT"})


class KernelCompileError(GpuError):
    """NVRTC rejected a kernel source; the message carries NVRTC's log."""


class NvdecUnavailable(GpuError):
    """NVDEC cannot decode this file here; the message is the one-line reason."""


class NotRegularFile(OSError):
    """The path exists but is a symlink, FIFO, device, socket or folder, not a regular file."""


class JSONRefused(ValueError):
    """The text is not JSON this program accepts; the message says why in one line."""


class ArchiveError(Exception):
    """The archive is not a TorchScript archive this reader accepts (the message says why)."""


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a report: our own errors as their message (they name the file and
    the cause), anything else prefixed with its type, since the type is then part of the news."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, CoverError) else f"{type(exc).__name__}: {text}"
