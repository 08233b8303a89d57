"""A thin layer over cuda-python: device memory, streams, events, NVRTC kernels, launches.

Why cuda-python rather than pycuda: it is NVIDIA's own binding, one-to-one with the C driver,
runtime and NVRTC APIs (the names below are the C names), shipped as wheels for each CUDA release,
and it works on the device's *primary* context, the one TensorRT and PyNvVideoCodec also use.
pycuda creates and pushes contexts of its own (``pycuda.autoinit``), so memory it allocates is
not usable from TensorRT's context without juggling the context stack, and it needs a compiler
at install time. Nothing here keeps global CUDA state beyond that primary context.

cuda-python is imported lazily: this module imports (and its pure helpers work) on machines
without cuda-python or without a GPU. Every call that needs the GPU raises :class:`GpuError` with
one line saying what is missing.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from cover_engine.runtime.errors import GpuError, KernelCompileError
from cover_engine.runtime.gpu.kernels import kernel_source

@functools.lru_cache(maxsize=1)
def cuda_api():
    """``(driver, runtime, nvrtc)`` modules of cuda-python, imported on first use.

    cuda-python >= 12.6 names them ``cuda.bindings.{driver,runtime,nvrtc}``; older releases
    ``cuda.{cuda,cudart,nvrtc}`` with the same functions.
    """
    try:
        from cuda.bindings import driver, nvrtc, runtime
    except ImportError:
        try:
            from cuda import cuda as driver, cudart as runtime, nvrtc  # type: ignore
        except ImportError:
            raise GpuError("cuda-python is not installed "
                           "(pip install 'cover-engine[gpu-cu12]' or '[gpu-cu13]', "
                           "matching the driver's CUDA major)") from None
    return driver, runtime, nvrtc


def check(result, what: str = "CUDA call"):
    """Unpack a cuda-python result tuple ``(status, *values)``; raise :class:`GpuError` on failure.

    Returns ``None``, the single value, or the tuple of values.
    """
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        name = getattr(status, "name", str(status))
        raise GpuError(f"{what} failed: {name}", status=name)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when cuda-python imports and the CUDA runtime sees at least one device."""
    try:
        _, runtime, _ = cuda_api()
        status, count = runtime.cudaGetDeviceCount()
        return int(status) == 0 and count > 0
    except Exception:  # missing driver library, broken install: all mean "no GPU here"
        return False


def device_fault() -> Optional[str]:
    """The name of the error that broke this process's CUDA context, or ``None`` when it works.

    Used after a library (PyNvVideoCodec, TensorRT) raised: a sticky fault (illegal address,
    ECC error, ...) is returned by every later call, so waiting for the device reveals it.
    Waits for all queued work; only for error paths.
    """
    try:
        _, runtime, _ = cuda_api()
        status, = runtime.cudaDeviceSynchronize()
    except Exception:  # no cuda-python / driver: nothing to report
        return None
    return None if int(status) == 0 else getattr(status, "name", str(status))


def require_gpu() -> None:
    if not gpu_available():
        raise GpuError("no CUDA GPU is usable here (driver, device or cuda-python missing)")


def use_device(device: int = 0) -> None:
    """Make ``device`` current on this thread and create its primary context (cudaFree(0))."""
    require_gpu()
    _, runtime, _ = cuda_api()
    check(runtime.cudaSetDevice(device), f"cudaSetDevice({device})")
    check(runtime.cudaFree(0), "creating the primary context")


def current_context() -> int:
    """Handle of the current (primary) CUDA context, for libraries that take one (NVDEC)."""
    driver, _, _ = cuda_api()
    return int(check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent"))


def compute_capability(device: int = 0) -> tuple[int, int]:
    """``(major, minor)`` of a device, e.g. ``(8, 0)`` for an A100."""
    require_gpu()
    _, runtime, _ = cuda_api()
    prop = check(runtime.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    return int(prop.major), int(prop.minor)


def device_name(device: int = 0) -> str:
    require_gpu()
    _, runtime, _ = cuda_api()
    prop = check(runtime.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    return (name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)).strip()


class Stream:
    """A non-blocking CUDA stream; ``int(stream)`` is the ``cudaStream_t`` handle."""

    def __init__(self):
        _, runtime, _ = cuda_api()
        self._runtime = runtime
        self.handle = int(check(runtime.cudaStreamCreateWithFlags(runtime.cudaStreamNonBlocking),
                                "cudaStreamCreateWithFlags"))

    def __int__(self) -> int:
        return self.handle

    def synchronize(self) -> None:
        check(self._runtime.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def wait(self, event: "Event") -> None:
        """Order this stream's later work after ``event`` (cross-stream dependency)."""
        check(self._runtime.cudaStreamWaitEvent(self.handle, event.handle, 0),
              "cudaStreamWaitEvent")

    def close(self) -> None:
        if self.handle:
            check(self._runtime.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = 0


class Event:
    """A CUDA event: completion marker and, with ``timing=True``, a timestamp."""

    def __init__(self, timing: bool = False):
        _, runtime, _ = cuda_api()
        self._runtime = runtime
        flags = runtime.cudaEventDefault if timing else runtime.cudaEventDisableTiming
        self.handle = int(check(runtime.cudaEventCreateWithFlags(flags),
                                "cudaEventCreateWithFlags"))

    def record(self, stream: Stream) -> "Event":
        check(self._runtime.cudaEventRecord(self.handle, int(stream)), "cudaEventRecord")
        return self

    def synchronize(self) -> None:
        check(self._runtime.cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def query(self) -> bool:
        """True when all work recorded before the event has finished (does not block)."""
        status, = self._runtime.cudaEventQuery(self.handle)
        return int(status) == 0

    def elapsed_ms(self, start: "Event") -> float:
        return float(check(self._runtime.cudaEventElapsedTime(start.handle, self.handle),
                           "cudaEventElapsedTime"))

    def close(self) -> None:
        if self.handle:
            check(self._runtime.cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = 0


class DeviceBuffer:
    """``nbytes`` of device memory (cudaMalloc); ``int(buf)`` / ``buf.ptr`` is the address."""

    def __init__(self, nbytes: int):
        _, runtime, _ = cuda_api()
        self._runtime = runtime
        self.nbytes = int(nbytes)
        self.ptr = int(check(runtime.cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({nbytes})"))

    @classmethod
    def from_array(cls, array: np.ndarray, stream: Optional[Stream] = None) -> "DeviceBuffer":
        """A device copy of a host array (synchronous unless ``stream`` is given)."""
        array = np.ascontiguousarray(array)
        buf = cls(array.nbytes)
        buf.upload(array, stream)
        return buf

    def __int__(self) -> int:
        return self.ptr

    def _check_range(self, what: str, nbytes: int, offset: int, array: np.ndarray) -> None:
        if not array.flags.c_contiguous:
            raise ValueError(f"{what} needs a C-contiguous array")
        if offset < 0 or offset + nbytes > self.nbytes:
            raise ValueError(f"{what} of {nbytes} bytes at {offset} overflows {self.nbytes}")

    def upload(self, array: np.ndarray, stream: Optional[Stream] = None, offset: int = 0) -> None:
        """Copy a C-contiguous host array to ``ptr + offset``. With a stream the copy is queued
        on it (keep ``array`` alive, ideally pinned, until the stream has passed it); without
        one it is done when this returns."""
        self._check_range("upload", array.nbytes, offset, array)
        kind = self._runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(self._runtime.cudaMemcpy(self.ptr + offset, array.ctypes.data, array.nbytes,
                                           kind), "cudaMemcpy")
        else:
            check(self._runtime.cudaMemcpyAsync(self.ptr + offset, array.ctypes.data,
                                                array.nbytes, kind, int(stream)),
                  "cudaMemcpyAsync")

    def download(self, out: np.ndarray, stream: Optional[Stream] = None,
                 offset: int = 0) -> np.ndarray:
        """Copy ``out.nbytes`` from ``ptr + offset`` into ``out``: queued on ``stream``, or,
        without one, after all work on the device has finished (for tests and debugging)."""
        self._check_range("download", out.nbytes, offset, out)
        kind = self._runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(self._runtime.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
            check(self._runtime.cudaMemcpy(out.ctypes.data, self.ptr + offset, out.nbytes, kind),
                  "cudaMemcpy")
        else:
            check(self._runtime.cudaMemcpyAsync(out.ctypes.data, self.ptr + offset, out.nbytes,
                                                kind, int(stream)), "cudaMemcpyAsync")
        return out

    def close(self) -> None:
        if self.ptr:
            check(self._runtime.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0

    def __enter__(self) -> "DeviceBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Lease:
    """A :class:`DeviceBuffer` on loan from a :class:`DevicePool`: ``close()`` hands it back
    (once) instead of freeing it. Reads and writes go to the pooled buffer."""

    def __init__(self, pool: "DevicePool", buffer: DeviceBuffer, nbytes: int):
        self._pool, self._buffer = pool, buffer
        self.ptr, self.nbytes = buffer.ptr, int(nbytes)

    def __int__(self) -> int:
        return self.ptr

    def upload(self, array: np.ndarray, stream: Optional[Stream] = None, offset: int = 0) -> None:
        self._check(array.nbytes, offset)
        self._buffer.upload(array, stream, offset)

    def download(self, out: np.ndarray, stream: Optional[Stream] = None,
                 offset: int = 0) -> np.ndarray:
        self._check(out.nbytes, offset)
        return self._buffer.download(out, stream, offset)

    def _check(self, nbytes: int, offset: int) -> None:
        if offset < 0 or offset + nbytes > self.nbytes:
            raise ValueError(f"{nbytes} bytes at {offset} overflow a lease of {self.nbytes}")

    @property
    def closed(self) -> bool:
        return self._buffer is None

    @property
    def buffer(self) -> Optional[DeviceBuffer]:
        """The pooled buffer behind the lease (``None`` once handed back)."""
        return self._buffer

    def close(self) -> None:
        if self._buffer is not None:
            self._pool._give(self._buffer)
            self._buffer = None
            self.ptr = 0

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DevicePool:
    """Device buffers kept for reuse instead of ``cudaMalloc`` / ``cudaFree`` per file or launch.

    ``cudaFree`` waits for the whole device (it would stall the inference of the file before),
    and ``cudaMalloc`` of a frame buffer costs more than the copy into it. The pool hands out the
    smallest idle buffer that fits (at most twice the size asked for, so one huge buffer is not
    tied up by small requests), else allocates a new one. A buffer must only be handed back once
    the work reading it has finished (the slot that holds it synchronises its stream first).
    Idle buffers beyond ``keep_bytes`` are freed, largest first.
    """

    def __init__(self, keep_bytes: int = 2 << 30):
        self.keep_bytes = int(keep_bytes)
        self._idle: list[DeviceBuffer] = []
        self.leased = 0          # buffers out on loan (a leak shows here)
        self.allocations = 0     # cudaMalloc calls made, for tests and benchmarks

    def take(self, nbytes: int) -> Lease:
        nbytes = max(int(nbytes), 1)
        fits = [b for b in self._idle if nbytes <= b.nbytes <= 2 * nbytes]
        if fits:
            buffer = min(fits, key=lambda b: b.nbytes)
            self._idle.remove(buffer)
        else:
            buffer = DeviceBuffer(nbytes)
            self.allocations += 1
        self.leased += 1
        return Lease(self, buffer, nbytes)

    def _give(self, buffer: DeviceBuffer) -> None:
        self.leased -= 1
        self._idle.append(buffer)
        idle = sum(b.nbytes for b in self._idle)
        for big in sorted(self._idle, key=lambda b: -b.nbytes):
            if idle <= self.keep_bytes:
                break
            self._idle.remove(big)
            idle -= big.nbytes
            big.close()

    @property
    def idle_bytes(self) -> int:
        return sum(b.nbytes for b in self._idle)

    def close(self) -> None:
        """Free the idle buffers (leased ones are freed when handed back after this)."""
        for buffer in self._idle:
            buffer.close()
        self._idle.clear()
        self.keep_bytes = 0


_POOLS: dict[int, DevicePool] = {}


def device_pool(device: int = 0) -> DevicePool:
    """The process's pool for ``device`` (decoded frames and kernel tables share it)."""
    if device not in _POOLS:
        _POOLS[device] = DevicePool()
    return _POOLS[device]


class PinnedArray:
    """A numpy array in page-locked host memory, so async copies really overlap."""

    def __init__(self, shape: Sequence[int], dtype=np.float32):
        _, runtime, _ = cuda_api()
        self._runtime = runtime
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        self.ptr = int(check(runtime.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            self.array = None
            check(self._runtime.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_2d(dst: int, dst_pitch: int, src: int, src_pitch: int, width_bytes: int, rows: int,
            stream: Stream) -> None:
    """Pitched copy (cudaMemcpy2DAsync) of ``rows`` rows, e.g. one plane of a frame; the
    direction (host or device on either side) follows from the addresses (unified addressing)."""
    _, runtime, _ = cuda_api()
    check(runtime.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width_bytes, rows,
                                    runtime.cudaMemcpyKind.cudaMemcpyDefault, int(stream)),
          "cudaMemcpy2DAsync")


# --------------------------------------------------------------------------- NVRTC and launches


def nvrtc_version() -> tuple[int, int]:
    _, _, nvrtc = cuda_api()
    major, minor = check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def nvrtc_arch(capability: tuple[int, int]) -> str:
    """NVRTC target for a device: ``sm_XY`` (CUBIN) when this NVRTC knows the device,
    else PTX for the newest architecture it knows (the driver JIT-compiles it)."""
    _, _, nvrtc = cuda_api()
    supported = sorted(int(a) for a in check(nvrtc.nvrtcGetSupportedArchs(),
                                             "nvrtcGetSupportedArchs"))
    wanted = capability[0] * 10 + capability[1]
    if wanted in supported:
        return f"sm_{wanted}"
    older = [a for a in supported if a <= wanted] or supported[:1]
    return f"compute_{older[-1]}"


def nvrtc_compile(source: str, name: str, arch: str, options: Iterable[str] = ()) -> bytes:
    """Compile CUDA C++ with NVRTC; CUBIN for ``sm_XY``, PTX for ``compute_XY``.

    No GPU is needed: this is a pure compiler call (the tests use it that way).
    """
    _, _, nvrtc = cuda_api()
    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []),
                 "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++14"] + \
            [o.encode() for o in options]
        status, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if int(status) != 0:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            raise KernelCompileError(f"NVRTC could not compile {name} for {arch}:\n"
                                     f"{log.decode(errors='replace').strip()}")
        if arch.startswith("sm_"):
            size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            image = b" " * size
            check(nvrtc.nvrtcGetCUBIN(prog, image), "nvrtcGetCUBIN")
        else:
            size = check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            image = b" " * size
            check(nvrtc.nvrtcGetPTX(prog, image), "nvrtcGetPTX")
        return image
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@dataclass(frozen=True)
class Kernel:
    """A loaded ``extern "C"`` kernel; launch it with typed numpy scalars as arguments."""

    name: str
    function: object

    def launch(self, grid: Sequence[int], block: Sequence[int], args: Sequence[np.generic],
               stream: Stream, shared_bytes: int = 0) -> None:
        """Launch on ``stream``. Each argument is a numpy scalar of the C parameter's exact type
        (``np.uint64`` for pointers, ``np.int32``, ``np.int64``, ``np.float32``): cuLaunchKernel
        copies each one from the address listed in ``kernelParams``."""
        driver, _, _ = cuda_api()
        for a in args:
            if not isinstance(a, np.generic):
                raise TypeError(f"{self.name}: kernel arguments must be numpy scalars, got {a!r}")
        holders = [np.array([a]) for a in args]
        params = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
        gx, gy, gz = (tuple(grid) + (1, 1))[:3]
        bx, by, bz = (tuple(block) + (1, 1))[:3]
        check(driver.cuLaunchKernel(self.function, gx, gy, gz, bx, by, bz, shared_bytes,
                                    driver.CUstream(int(stream)), params.ctypes.data, 0),
              f"launching {self.name}")


class KernelModule:
    """A ``.cu`` file compiled by NVRTC for the current device and loaded into its context."""

    def __init__(self, filename: str, device: int = 0, options: Iterable[str] = ()):
        use_device(device)
        driver, _, _ = cuda_api()
        self.filename = filename
        self.arch = nvrtc_arch(compute_capability(device))
        image = nvrtc_compile(kernel_source(filename), filename, self.arch, options)
        self.module = check(driver.cuModuleLoadData(image), f"loading {filename}")
        self._kernels: dict[str, Kernel] = {}

    def kernel(self, name: str) -> Kernel:
        if name not in self._kernels:
            driver, _, _ = cuda_api()
            fn = check(driver.cuModuleGetFunction(self.module, name.encode()),
                       f"{self.filename}: kernel {name}")
            self._kernels[name] = Kernel(name, fn)
        return self._kernels[name]


@functools.lru_cache(maxsize=None)
def load_module(filename: str, device: int = 0) -> KernelModule:
    """Compile-and-load once per process and device."""
    return KernelModule(filename, device)


def pointer_array(pointers: Sequence[int]) -> np.ndarray:
    """Device addresses as the ``unsigned long long`` array a kernel indexes."""
    return np.asarray([int(p) for p in pointers], dtype=np.uint64)
