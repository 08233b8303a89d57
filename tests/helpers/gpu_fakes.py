"""Stand-ins for TensorRT, the CUDA runtime and PyNvVideoCodec that behave like the real ones.

Each fake models the behaviour the engine depends on, as read from the real libraries (TensorRT
10/11 Python API, cuda-bindings, PyNvVideoCodec 2.2.4 and the Video Codec SDK's ``NvDecoder`` it
wraps), including the parts that bit earlier code:

* :class:`HostMemory` registers every "device" allocation; :func:`host_copy_2d` is
  ``cudaMemcpy2DAsync`` on host memory, and refuses, as CUDA does, a pitch below the row
  (``cudaErrorInvalidPitchValue``) and any read or write outside an allocation
  (``cudaErrorInvalidValue`` -- on a GPU, a fault that compute-sanitizer reports).
* :class:`FakeSimpleDecoder` decodes with PyAV into one packed buffer per frame laid out as
  NvDecoder lays it out (rows of the width rounded up to even, ``ceil(H / 2)`` chroma rows, P016
  samples in the high bits), exposes planes whose CUDA Array Interface has **element** strides
  and ``H // 2`` chroma rows, reports the header's frame count, drops out-of-range indices like
  the real ``get_batch_frames_by_index``, and refuses ``reconfigure_decoder`` beyond its maximum
  size or for another bit depth.
* :class:`FakeContext` reads the shapes its context holds *when it runs*: a CUDA graph replayed
  after the context was rebound for another batch size computes the wrong thing, as TensorRT's
  shape-dependent state could.
"""
from __future__ import annotations

import ctypes
import json
import types
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np

from cover_engine.runtime.gpu import cuda as gpu

# ------------------------------------------------------------------------------ memory


class HostMemory:
    """Every block of host memory standing in for device memory, by address."""

    blocks: dict[int, int] = {}

    @classmethod
    def register(cls, array: np.ndarray) -> int:
        cls.blocks[array.ctypes.data] = array.nbytes
        return array.ctypes.data

    @classmethod
    def forget(cls, address: int) -> None:
        cls.blocks.pop(address, None)

    @classmethod
    def inside(cls, start: int, end: int) -> bool:
        return any(base <= start and end <= base + size for base, size in cls.blocks.items())


def host_copy_2d(dst, dst_pitch, src, src_pitch, width_bytes, rows, stream) -> None:
    """``cudaMemcpy2DAsync`` between registered host blocks, with CUDA's refusals."""
    if dst_pitch < width_bytes or src_pitch < width_bytes:
        raise gpu.GpuError("cudaMemcpy2DAsync failed: cudaErrorInvalidPitchValue",
                           status="cudaErrorInvalidPitchValue")
    last = (rows - 1) * max(src_pitch, 0)
    if rows and (not HostMemory.inside(src, src + last + width_bytes) or
                 not HostMemory.inside(dst, dst + (rows - 1) * dst_pitch + width_bytes)):
        raise gpu.GpuError("cudaMemcpy2DAsync failed: cudaErrorInvalidValue",
                           status="cudaErrorInvalidValue")
    for r in range(rows):
        ctypes.memmove(dst + r * dst_pitch, src + r * src_pitch, width_bytes)


class FakeBuffer:
    """Host memory posing as device memory (addresses are real, so bindings can be followed)."""

    made = 0
    freed = 0

    def __init__(self, nbytes):
        self.nbytes = int(nbytes)
        self._mem = np.zeros(max(self.nbytes, 1), np.uint8)
        self.ptr = HostMemory.register(self._mem)
        self.closed = False
        FakeBuffer.made += 1

    def upload(self, array, stream=None, offset=0):
        assert offset + array.nbytes <= self.nbytes
        ctypes.memmove(self.ptr + offset, array.ctypes.data, array.nbytes)

    def download(self, out, stream=None, offset=0):
        assert offset + out.nbytes <= self.nbytes
        ctypes.memmove(out.ctypes.data, self.ptr + offset, out.nbytes)
        return out

    def close(self):
        if not self.closed:
            FakeBuffer.freed += 1
            HostMemory.forget(self.ptr)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakePinned:
    def __init__(self, shape, dtype=np.float32):
        self.array = np.zeros(shape, dtype)

    def close(self):
        pass


class FakeStream:
    handle = 7

    def __int__(self):
        return self.handle

    def synchronize(self):
        pass

    def close(self):
        pass


class FakeEvent:
    def __init__(self, timing=False):
        pass

    def record(self, stream):
        return self

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_ms(self, start):
        return 0.0

    def close(self):
        pass


class FakeCudaRuntime:
    """Stream capture records the enqueued engine runs; a graph launch replays them."""

    current = None

    def __init__(self):
        self.capturing = None
        self.launches = 0
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)
        FakeCudaRuntime.current = self

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return (0, graph)

    def cudaGraphInstantiate(self, graph, flags):
        return (0, list(graph))

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph):
        return (0,)

    def cudaGraphLaunch(self, graph, stream):
        self.launches += 1
        for run in graph:
            run()
        return (0,)


def install_fake_gpu(monkeypatch) -> FakeCudaRuntime:
    """cuda-python replaced by the fakes above (TensorRT separately: :func:`fake_tensorrt`)."""
    runtime = FakeCudaRuntime()
    for name, value in {"use_device": lambda device=0: None,
                        "compute_capability": lambda device=0: (8, 0),
                        "device_name": lambda device=0: GPU_NAME,
                        "current_context": lambda: 0,
                        "device_fault": lambda: None,
                        "copy_2d": host_copy_2d,
                        "DeviceBuffer": FakeBuffer, "PinnedArray": FakePinned,
                        "Stream": FakeStream, "Event": FakeEvent,
                        "cuda_api": lambda: (None, runtime, None)}.items():
        monkeypatch.setattr(gpu, name, value)
    monkeypatch.setattr(gpu, "_POOLS", {})
    return runtime


class EmulatedKernels:
    """Stands in for the CUDA kernels: their numpy emulation, written where they would write.
    Decoded frames on the (fake) device are read back through ``DeviceFrames.download``."""

    def __init__(self, device=0, pool=None):
        self.launches = 0
        self.pool = pool if pool is not None else gpu.device_pool(device)

    def launch(self, frames, tables, out_ptr, out_dtype, out_shape, stream):
        from cover_engine.runtime.gpu.nvdec import DeviceFrames
        from cover_engine.runtime.gpu.emulation import HostFrames, emulate_view

        if isinstance(frames, DeviceFrames):
            planes = [frames.download(s) for s in range(len(frames.indices))]
            frames = HostFrames([y for y, _ in planes], [c for _, c in planes],
                                frames.sample_shift, frames.conv)
        count = int(np.prod(out_shape))
        out = np.ctypeslib.as_array((ctypes.c_float * count).from_address(out_ptr))
        out.reshape(out_shape)[:tables.clips] = emulate_view(tables, frames)
        self.launches += 1
        return self.pool.take(256)  # the tables' lease, as the real launch returns


# ------------------------------------------------------------------------------ TensorRT

TRT_VERSION = "10.9.0.34"
GPU_NAME, CAPABILITY = "NVIDIA A100-SXM4-80GB", "8.0"


class FakeContext:
    """Records what the backend asks of an execution context."""

    def __init__(self, engine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0
        engine.contexts.append(self)

    def set_input_shape(self, name, shape):
        t = self.engine.tensors.get(name)
        if t is None or t["mode"] != "INPUT" or len(shape) != len(t["shape"]) or shape[0] > 4:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        if name not in self.engine.tensors:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        runtime = FakeCudaRuntime.current
        if runtime is not None and runtime.capturing is not None:
            runtime.capturing.append(self.run)  # recorded into the CUDA graph, not run
        else:
            self.run()
        return True

    def _tensor(self, name) -> np.ndarray:
        shape = self.shapes.get(name) or (self.shapes["view"][0],) + tuple(
            self.engine.tensors[name]["shape"][1:])
        count = int(np.prod(shape))
        return np.ctypeslib.as_array((ctypes.c_float * count).from_address(
            self.addresses[name])).reshape(shape)

    def run(self):
        """A stand-in network reading and writing through the bound addresses, with the shapes
        the context holds now: score maps are the view's mean per item (plus the semantic
        features' mean after the semantic engine), so any wrong binding shows in the numbers."""
        view = self._tensor("view")
        level = view.reshape(len(view), -1).mean(axis=1)
        if "sem_feats" in self.shapes:
            level = level + self._tensor("sem_feats").reshape(len(view), -1).mean(axis=1)
        else:
            self._tensor("sem_feats")[...] = level.reshape(-1, 1, 1) * 2
        self.runs += 1
        self._tensor("score_map")[...] = level.reshape((-1,) + (1,) * 4)


class FakeEngine:
    def __init__(self, data):
        """``data``: the engine's tensors, or ``{"name": network name, "tensors": [...]}``."""
        tensors = data["tensors"] if isinstance(data, dict) else data
        self.name = data.get("name", "") if isinstance(data, dict) else ""
        self.tensors = {t["name"]: t for t in tensors}
        self.order = [t["name"] for t in tensors]
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self):
        return len(self.order)

    def get_tensor_name(self, i):
        return self.order[i]

    def get_tensor_mode(self, name):
        return self.tensors[name]["mode"]

    def get_tensor_shape(self, name):
        return tuple(self.tensors[name]["shape"])

    def get_tensor_dtype(self, name):
        return self.tensors[name]["dtype"]

    def create_execution_context(self):
        return FakeContext(self)


def fake_tensorrt(version: str = TRT_VERSION) -> types.ModuleType:
    """Just the TensorRT 10 Python API the backend uses; an engine file is JSON of its tensors."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT", NONE="NONE")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF")
    trt.nptype = lambda dt: {"FLOAT": np.float32, "HALF": np.float16}[dt]

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            try:
                return FakeEngine(json.loads(data))
            except ValueError:
                return None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


# ------------------------------------------------------------------------------ PyNvVideoCodec

#: (codec, bit depth) the fake GPU decodes, as an H100's NVDEC: no H.264 High10, no 12-bit AV1.
FAKE_CAPS = {("H264", 8), ("HEVC", 8), ("HEVC", 10), ("HEVC", 12), ("VP9", 8), ("VP9", 10),
             ("VP9", 12), ("AV1", 8), ("AV1", 10), ("VP8", 8), ("MPEG2", 8)}
_CODEC_IDS = {"h264": "H264", "hevc": "HEVC", "vp9": "VP9", "libvpx-vp9": "VP9", "av1": "AV1",
              "libdav1d": "AV1", "vp8": "VP8", "mpeg2video": "MPEG2"}


class PyNvVCException(Exception):
    pass


class PyNvVCExceptionUnsupported(PyNvVCException):
    pass


class FakePlane:
    def __init__(self, ptr, shape, strides, typestr):
        self.__cuda_array_interface__ = {"shape": shape, "strides": strides, "typestr": typestr,
                                         "data": (ptr, False), "version": 3}


class FakeDecodedFrame:
    """One decoded picture in NvDecoder's packed layout (see the module docstring)."""

    def __init__(self, frame: av.VideoFrame, bit_depth: int, garbage: int = 0xA5):
        h, w = frame.height, frame.width
        sample = 1 if bit_depth <= 8 else 2
        dtype = np.uint8 if sample == 1 else np.dtype("<u2")
        even = (w + 1) & ~1
        rows = h + -(-h // 2)
        self.buffer = np.full((rows, even), garbage, dtype)
        planes = []
        for p in frame.planes:
            raw = np.frombuffer(p, dtype, count=p.line_size * p.height // sample)
            planes.append(raw.reshape(p.height, -1)[:, :p.width].astype(np.uint32))
        shift = 16 - bit_depth if sample == 2 else 0
        y, u, v = planes
        self.buffer[:h, :w] = y << shift
        uv = np.stack([u, v], -1).reshape(u.shape[0], -1)
        self.buffer[h:, :uv.shape[1]] = uv << shift
        self.ptr = HostMemory.register(self.buffer)
        typestr = "|u1" if sample == 1 else "|u2"
        # PyNvVideoCodec 2.2: shapes from the decoder, strides in elements, H // 2 chroma rows
        self._planes = [FakePlane(self.ptr, (h, even, 1), (even, 1, 1), typestr),
                        FakePlane(self.ptr + h * even * sample, (h // 2, even // 2, 2),
                                  (even, 2, 1), typestr)]
        self.timestamp = int(frame.pts)
        self.waited_on: list[int] = []

    def cuda(self):
        return list(self._planes)

    def framesize(self):
        return self.buffer.nbytes

    def WaitOnCUStream(self, stream):
        self.waited_on.append(int(stream))

    def __del__(self):
        HostMemory.forget(self.ptr)


class FakeSimpleDecoder:
    """``PyNvVideoCodec.SimpleDecoder`` over PyAV (see the module docstring)."""

    made: list["FakeSimpleDecoder"] = []

    def __init__(self, enc_file_path, gpu_id=0, cuda_context=0, cuda_stream=0,
                 use_device_memory=True, max_width=0, max_height=0,
                 need_scanned_stream_metadata=0, decoder_cache_size=4, output_color_type=None,
                 bWaitForSessionWarmUp=False, enableDecodeStats=False):
        self.max_width, self.max_height = max_width, max_height
        self.kwargs = dict(gpu_id=gpu_id, cuda_stream=cuda_stream,
                           use_device_memory=use_device_memory,
                           output_color_type=output_color_type)
        self.reconfigured: list[str] = []
        self.scanned = bool(need_scanned_stream_metadata)
        self._load(enc_file_path)
        if len(self) == 0:  # as the real constructor
            raise Exception("Elementary streams not supported by Simple Decoder. Invalid input "
                            "stream.")
        if self.max_width and (self.width > self.max_width or self.height > self.max_height):
            raise PyNvVCException("frame larger than the decoder's maximum size")
        FakeSimpleDecoder.made.append(self)

    def _load(self, path) -> None:
        self.path = str(path)
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            self.codec = _CODEC_IDS.get(stream.codec_context.name)
            self.header_frames = int(stream.frames or 0)
            if not self.header_frames and self.scanned:  # the scanned metadata's count
                self.header_frames = sum(1 for p in container.demux(stream) if p.size)
                container.seek(0)
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            first = next(container.decode(stream))
            self.bit_depth = max(c.bits for c in first.format.components)
        if self.codec is None:
            raise PyNvVCExceptionUnsupported("codec not supported")

    def __len__(self):
        return self.header_frames

    def reconfigure_decoder(self, new_source):
        old = (self.bit_depth, self.codec)
        self._load(new_source)
        if (self.bit_depth, self.codec) != old:
            raise PyNvVCException("Reconfigure Not supported for bit depth change")
        if self.width > self.max_width or self.height > self.max_height:
            raise PyNvVCException("Reconfigure Not supported when width/height > "
                                  "maxwidth/maxheight")
        self.reconfigured.append(self.path)

    def get_batch_frames_by_index(self, indices):
        wanted = []
        for i in indices:
            if 0 <= i < len(self):
                wanted.append(int(i))
            else:
                warnings.warn(f"Skipping index {i}: Out of valid range [0, {len(self) - 1}]")
        frames = {}
        with av.open(self.path) as container:
            for k, frame in enumerate(container.decode(video=0)):
                if k in wanted:
                    frames[k] = FakeDecodedFrame(frame, self.bit_depth)
                if k >= max(wanted, default=-1):
                    break
        return [self._substitute(frames, i) for i in wanted]

    def _substitute(self, frames, index):
        return frames[index]


class FakeDemuxer:
    def __init__(self, filename):
        with av.open(str(filename)) as container:
            stream = container.streams.video[0]
            self.codec = _CODEC_IDS.get(stream.codec_context.name, stream.codec_context.name)
            first = next(container.decode(stream))
            self.depth = max(c.bits for c in first.format.components)

    def GetNvCodecId(self):
        return f"cudaVideoCodec.{self.codec}"

    def ChromaFormat(self):
        return "cudaVideoChromaFormat.420"

    def BitDepth(self):
        return self.depth


def fake_pynvvideocodec(caps=FAKE_CAPS, decoder=FakeSimpleDecoder) -> types.ModuleType:
    """The part of PyNvVideoCodec 2.2 the engine uses."""
    nvc = types.ModuleType("PyNvVideoCodec")
    nvc.__version__ = "2.2.4"
    nvc.OutputColorType = types.SimpleNamespace(NATIVE="NATIVE", RGB="RGB", RGBP="RGBP")
    nvc.PyNvVCException, nvc.PyNvVCExceptionUnsupported = PyNvVCException, \
        PyNvVCExceptionUnsupported
    nvc.SimpleDecoder = decoder
    nvc.CreateDemuxer = FakeDemuxer
    nvc.caps_asked = []

    def GetDecoderCaps(gpuid, codec, chromaformat, bitdepth):
        nvc.caps_asked.append((codec, chromaformat, bitdepth))
        name = str(codec).rpartition(".")[2]
        if (name, int(bitdepth)) not in caps:
            return {}
        return {"codec_id": codec, "chromaformat_id": chromaformat, "bitdepth": bitdepth,
                "num_decoder_engines": 7, "width_min": 48, "height_min": 16,
                "width_max": 8192, "height_max": 8192, "mb_num_max": 262144}

    nvc.GetDecoderCaps = GetDecoderCaps
    return nvc


def time_base() -> Fraction:
    return Fraction(1, 25)
