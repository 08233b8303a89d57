"""NVDEC decoding with PyNvVideoCodec: only the frames a sample needs, kept on the GPU.

:class:`NvdecDecoder` asks PyNvVideoCodec's ``SimpleDecoder`` for exactly the needed frame
indices (``get_batch_frames_by_index``: it seeks to the key frame before each run of wanted
frames and decodes from there) in the native semi-planar output -- NV12 for 8-bit 4:2:0, P016 for
10/12-bit -- and copies them, device to device on the caller's stream, into a pooled buffer
(:class:`~.cuda.DevicePool`): the decoder's surfaces are then free for its next call, and the
frames live exactly as long as the :class:`DeviceFrames` that the view kernels read.

What the real objects look like (PyNvVideoCodec 2.2, read from its binary and the Video Codec
SDK's ``NvDecoder`` it wraps), and what this module relies on:

* A decoded frame is one packed buffer (``bDeviceFramePitched`` is off): the luma plane, rows of
  ``GetWidth()`` samples (the width rounded up to even for NV12/P016), then ``ceil(H / 2)``
  interleaved chroma rows of the same length; ``framesize()`` is the buffer's size.
* ``frame.cuda()`` lists one CUDA Array Interface per plane, luma ``(H, W, 1)`` and chroma
  ``(H // 2, W / 2, 2)``, ``|u1`` or ``|u2``, with strides **in elements** (``(W, 1, 1)``,
  ``(W, 2, 1)``), not the bytes the interface specifies. :func:`plane_layout` reads either
  convention (the innermost stride tells them apart) and derives the pitch in bytes.
* For an odd height the chroma view lists ``H // 2`` rows, one short of what the pictures' last
  luma row needs; the buffer holds ``ceil(H / 2)`` rows, which is used only where
  ``framesize()`` proves the row is there (:func:`frame_sources`).
* ``get_batch_frames_by_index`` drops indices it thinks out of range, and near the end of some
  containers (MKV/WebM/MOV/FLV) its seek accepts a nearby frame instead of the one asked for:
  every frame's ``timestamp`` is checked against the file's own frame index
  (:func:`~.decode.frame_index`, the CPU path's numbering), and any doubt means the CPU path.

Frame indices are the CPU path's (presentation order, counted from the first picture). Colour
constants come from the CPU path's probe of the same file (:func:`~.decode.probe`), so both paths
use the same matrix and range.

:func:`nvdec_refusal` says, without touching a GPU, why a file must take the CPU path instead
(images, non-4:2:0 chroma, more than 12 bits, a codec NVDEC lacks, interlaced video, rotation
asked for, no PyNvVideoCodec). The decoder then asks the driver whether this GPU decodes the
stream's codec at its bit depth and size (``GetDecoderCaps``). Whatever means "NVDEC cannot take
this file" raises :class:`NvdecUnavailable`, which the pipeline answers with the CPU path; a GPU
that is out of memory or whose CUDA context broke raises :class:`~.cuda.GpuError` instead, since
the CPU path would only hide it.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from cover_engine.runtime.constants import NVDEC_CODECS, NVDEC_CONTAINER_HINT, NVDEC_MAX_SIZE
from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.constants import DEFAULT_COLOUR
from cover_engine.runtime.media.colour import frame_conversion
from cover_engine.runtime.media.decode import FrameIndex, MediaInfo, frame_index, local_path
from cover_engine.runtime.errors import NvdecUnavailable

#: Pixel formats NVDEC returns as NV12 / P016 (4:2:0, 8 to 12 bits).
_SEMI_PLANAR_SOURCE = re.compile(r"^yuvj?420p(10|12)?(le|be)?$")
#: Row alignment of the frame buffer (bytes), as CUDA pitched allocations use.
PITCH_ALIGN = 256
#: CUDA statuses of a copy that mean "this frame's layout is not what we thought": the file
#: takes the CPU path. Any other failed copy is a GPU problem and is raised as it is.
COPY_REFUSALS = frozenset({"cudaErrorInvalidValue", "cudaErrorInvalidPitchValue",
                           "cudaErrorInvalidDevicePointer", "cudaErrorInvalidMemcpyDirection"})
#: Words in a library's message that mean the GPU ran out of memory.
_OUT_OF_MEMORY_TEXT = ("out of memory", "cuda_error_out_of_memory", "cudaerrormemoryallocation")
#: Errors that are bugs (ours, or an API that changed), never a reason to decode on the CPU.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError)


@functools.lru_cache(maxsize=1)
def _pynvvideocodec() -> tuple[object, str]:
    """The module and ``""``, or ``None`` and why not (tried once per process)."""
    try:
        import PyNvVideoCodec
    except ImportError:
        return None, "PyNvVideoCodec is not installed"
    except Exception as exc:  # its import probes the driver and raises RuntimeError without one
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        return None, with_container_hint(f"PyNvVideoCodec cannot start: {first}")
    return PyNvVideoCodec, ""


def with_container_hint(reason: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """``reason``, plus the container setting to check when it says the driver's video
    libraries are missing, or when this is a GPU container whose ``NVIDIA_DRIVER_CAPABILITIES``
    leaves out ``video`` (then every file takes the CPU path, and the notice must say why)."""
    environ = os.environ if environ is None else environ
    lower = reason.lower()
    caps = environ.get("NVIDIA_DRIVER_CAPABILITIES")
    no_video = caps is not None and not {"video", "all"} & {
        c.strip().lower() for c in caps.split(",")}
    if no_video or any(word in lower for word in ("libnv", "nvcuvid", "shared object",
                                                  "could not load")):
        return f"{reason}; {NVDEC_CONTAINER_HINT}"
    return reason


def import_pynvvideocodec():
    """The ``PyNvVideoCodec`` module, or :class:`NvdecUnavailable` saying why not."""
    module, reason = _pynvvideocodec()
    if module is None:
        raise NvdecUnavailable(reason)
    return module


def nvdec_refusal(info: MediaInfo, *, rotate: bool = False) -> Optional[str]:
    """Why this file cannot take the NVDEC path (``None`` when it can try)."""
    if info.is_image:
        return "images are decoded on the CPU"
    if not _SEMI_PLANAR_SOURCE.match(info.pix_fmt):
        return f"{info.pix_fmt} frames (the GPU kernels take 4:2:0 up to 12 bits)"
    if info.codec not in NVDEC_CODECS:
        return f"NVDEC has no {info.codec} decoder"
    if getattr(info, "interlaced", False):
        return ("interlaced video: NVDEC would deinterlace it where the CPU path keeps the "
                "fields woven, and the views would differ")
    if rotate and info.rotation:
        return "rotation is applied on the CPU path"
    try:
        import_pynvvideocodec()
    except NvdecUnavailable as exc:
        return str(exc)
    return None


def caps_refusal(caps: Optional[Mapping], what: str, width: int, height: int) -> Optional[str]:
    """Why ``GetDecoderCaps``'s answer rules this stream out (``None`` when it does not).

    PyNvVideoCodec returns a dict (``num_decoder_engines``, ``width_min/max``,
    ``height_min/max``, ...), empty when the GPU has no decoder for the codec, chroma format
    and bit depth asked about.
    """
    caps = dict(caps or {})
    engines = int(caps.get("num_decoder_engines", 1) or 0)
    supported = caps.get("is_supported", caps.get("supported", True))
    if not caps or not engines or not supported:
        return f"this GPU's NVDEC cannot decode {what}"
    low_w, low_h = int(caps.get("width_min", 0) or 0), int(caps.get("height_min", 0) or 0)
    high_w, high_h = int(caps.get("width_max", 0) or 0), int(caps.get("height_max", 0) or 0)
    if width < low_w or height < low_h or (high_w and width > high_w) or \
            (high_h and height > high_h):
        return (f"{width}x{height} is outside this GPU's NVDEC range for {what} "
                f"({low_w}x{low_h} to {high_w}x{high_h})")
    return None


@dataclass(frozen=True)
class PlaneLayout:
    """One decoded plane as PyNvVideoCodec exposes it (CUDA Array Interface)."""

    ptr: int
    rows: int
    row_bytes: int      # bytes of pixel data per row
    pitch: int          # bytes from one row to the next
    sample_bytes: int


def plane_layout(cai: Mapping) -> PlaneLayout:
    """A plane's layout from its ``__cuda_array_interface__``, strides in bytes (as the interface
    specifies) or in elements (as PyNvVideoCodec 2.2 reports them); the innermost stride, one
    sample, tells which. No strides means C-contiguous (packed)."""
    shape = tuple(int(s) for s in cai["shape"])
    itemsize = int(np.dtype(cai["typestr"]).itemsize)
    rows, row_bytes = shape[0], int(np.prod(shape[1:])) * itemsize
    strides = cai.get("strides")
    if strides is None:
        pitch = row_bytes
    else:
        inner = int(strides[-1])
        unit = 1 if inner == itemsize else itemsize if inner == 1 else 0
        if not unit:
            raise NvdecUnavailable(f"decoded plane {shape} has strides {tuple(strides)} in "
                                   f"neither bytes nor {cai['typestr']} elements")
        pitch = int(strides[0]) * unit
        if pitch < row_bytes:
            raise NvdecUnavailable(f"decoded plane {shape} has a pitch of {pitch} bytes, below "
                                   f"its rows of {row_bytes}")
    return PlaneLayout(int(cai["data"][0]), rows, row_bytes, pitch, itemsize)


def frame_planes(frame) -> tuple[PlaneLayout, PlaneLayout]:
    """Luma and interleaved-chroma planes of a decoded NV12 / P016 frame."""
    planes = list(frame.cuda())
    if len(planes) != 2:
        raise NvdecUnavailable(f"decoder returned {len(planes)} planes, not semi-planar 4:2:0")
    luma, chroma = (plane_layout(p.__cuda_array_interface__) for p in planes)
    if luma.sample_bytes != chroma.sample_bytes:
        raise NvdecUnavailable("decoder output is not NV12 / P016")
    return luma, chroma


def _frame_size(frame) -> Optional[int]:
    size = getattr(frame, "framesize", None)
    try:
        return int(size()) if callable(size) else None
    except Exception:  # an older binding without it: the odd-height row cannot be proven
        return None


def frame_sources(frame, height: int, width: int) -> tuple[int, int, int, int, int]:
    """``(luma address, luma pitch, chroma address, chroma pitch, sample bytes)`` of the
    ``height`` x ``width`` picture in a decoded frame, checked against its planes; raises
    :class:`NvdecUnavailable` where they cannot hold the picture."""
    luma, chroma = frame_planes(frame)
    sample = luma.sample_bytes
    chroma_rows, chroma_bytes = -(-height // 2), 2 * -(-width // 2) * sample
    if luma.rows < height or luma.row_bytes < width * sample or chroma.row_bytes < chroma_bytes:
        raise NvdecUnavailable(f"NVDEC frame planes {luma.rows}x{luma.row_bytes // sample} / "
                               f"{chroma.rows}x{chroma.row_bytes // sample} do not hold the "
                               f"stream's {width}x{height}")
    if chroma.rows < chroma_rows:
        # odd height: the view lists height // 2 chroma rows; the packed frame holds one more
        size = _frame_size(frame)
        end = chroma.ptr + (chroma_rows - 1) * chroma.pitch + chroma_bytes
        if chroma.rows < height // 2 or size is None or end > luma.ptr + size:
            raise NvdecUnavailable(f"NVDEC frame of odd height {height} lacks its last chroma "
                                   "row")
    return luma.ptr, luma.pitch, chroma.ptr, chroma.pitch, sample


def frame_timestamp(frame) -> Optional[int]:
    """The presentation timestamp NVDEC gives a decoded frame (stream time base)."""
    stamp = getattr(frame, "timestamp", None)
    if stamp is None and callable(getattr(frame, "getPTS", None)):
        stamp = frame.getPTS()
    return None if stamp is None else int(stamp)


def check_frames(decoded: Sequence, wanted: Sequence[int], index: FrameIndex) -> None:
    """Every decoded frame is the one asked for (by its timestamp in the file's frame index)."""
    if len(decoded) != len(wanted):
        raise NvdecUnavailable(f"NVDEC returned {len(decoded)} of {len(wanted)} frames")
    for frame, want in zip(decoded, wanted):
        stamp = frame_timestamp(frame)
        if stamp is None:
            raise NvdecUnavailable("NVDEC frames carry no timestamp to check them by")
        got = index.frame_at(stamp)
        if got != want:
            which = f"frame {got}" if got >= 0 else f"a frame stamped {stamp}"
            raise NvdecUnavailable(f"NVDEC returned {which} for frame {want}")


@dataclass
class DeviceFrames:
    """Decoded frames on the GPU in the layout ``kernels/views.cu`` reads.

    Frame ``s`` (in the order of ``indices``) has its luma plane at ``luma[s]`` and its chroma
    plane at ``chroma[s]``; ``luma_table`` / ``chroma_table`` are the device copies of those
    address arrays that the kernels take. ``close()`` hands the memory back to its pool.
    """

    indices: np.ndarray          # int64 frame indices, one per slot
    height: int
    width: int
    sample_bytes: int            # 1 NV12, 2 P016
    sample_shift: int            # 16 - bit_depth for P016
    luma_pitch: int
    chroma_pitch: int
    luma: np.ndarray             # uint64 device addresses
    chroma: np.ndarray
    conv: object                 # colour.YuvToRgb or colour.SwsConversion
    luma_table: int = 0
    chroma_table: int = 0
    _owned: list = field(default_factory=list, repr=False)

    def download(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of frame ``slot``'s luma and chroma planes (tests, debugging)."""
        dtype = np.uint8 if self.sample_bytes == 1 else np.uint16
        pool = self._owned[0]
        luma = np.empty((self.height, self.luma_pitch // self.sample_bytes), dtype)
        chroma = np.empty((-(-self.height // 2), self.chroma_pitch // self.sample_bytes), dtype)
        pool.download(luma, offset=int(self.luma[slot]) - pool.ptr)
        pool.download(chroma, offset=int(self.chroma[slot]) - pool.ptr)
        return luma[:, :self.width], chroma[:, :2 * -(-self.width // 2)]

    def close(self) -> None:
        for buf in self._owned:
            buf.close()
        self._owned.clear()


def frame_buffer_layout(height: int, width: int, sample_bytes: int) -> tuple[int, int, int]:
    """``(pitch, luma_bytes, frame_bytes)`` of one frame in :class:`NvdecDecoder`'s buffer."""
    pitch = -(-(2 * -(-width // 2) * sample_bytes) // PITCH_ALIGN) * PITCH_ALIGN
    luma_bytes = pitch * height
    return pitch, luma_bytes, luma_bytes + pitch * -(-height // 2)


def assemble_frames(sources: Sequence[tuple[int, int, int, int]], indices: Sequence[int],
                    height: int, width: int, sample_bytes: int, sample_shift: int,
                    conv, stream: gpu.Stream,
                    pool: Optional[gpu.DevicePool] = None) -> DeviceFrames:
    """Copy frames, given as ``(luma address, luma pitch, chroma address, chroma pitch)`` on the
    host or the device, into one pooled device buffer laid out for the kernels; queued on
    ``stream`` (host sources must stay alive until it has run). If a copy fails, the buffer goes
    back to the pool once the copies queued before have run, and the error is raised."""
    pool = pool if pool is not None else gpu.DevicePool()
    pitch, luma_bytes, frame_bytes = frame_buffer_layout(height, width, sample_bytes)
    chroma_rows, chroma_row_bytes = -(-height // 2), 2 * -(-width // 2) * sample_bytes
    owned = [pool.take(frame_bytes * len(sources))]
    try:
        base = owned[0].ptr
        luma_ptrs, chroma_ptrs = [], []
        for s, (luma, luma_pitch, chroma, chroma_pitch) in enumerate(sources):
            dst = base + s * frame_bytes
            gpu.copy_2d(dst, pitch, luma, luma_pitch, width * sample_bytes, height, stream)
            gpu.copy_2d(dst + luma_bytes, pitch, chroma, chroma_pitch, chroma_row_bytes,
                        chroma_rows, stream)
            luma_ptrs.append(dst)
            chroma_ptrs.append(dst + luma_bytes)
        frames = DeviceFrames(indices=np.asarray(indices, np.int64), height=height, width=width,
                              sample_bytes=sample_bytes, sample_shift=sample_shift,
                              luma_pitch=pitch, chroma_pitch=pitch,
                              luma=gpu.pointer_array(luma_ptrs),
                              chroma=gpu.pointer_array(chroma_ptrs), conv=conv)
        owned.append(pool.take(2 * frames.luma.nbytes))
        tables = np.concatenate([frames.luma, frames.chroma])
        owned[1].upload(tables, stream)
        frames.luma_table, frames.chroma_table = owned[1].ptr, owned[1].ptr + frames.luma.nbytes
        frames._owned += owned
        frames._tables = tables  # the queued upload reads it
        return frames
    except BaseException:
        try:
            stream.synchronize()  # nothing queued may still write into the buffer
        finally:
            for lease in owned:
                lease.close()
        raise


def upload_frames(host, indices: Sequence[int], stream: gpu.Stream,
                  pool: Optional[gpu.DevicePool] = None) -> DeviceFrames:
    """Device copies of host frames in the kernels' layout (a
    :class:`~cover_engine.runtime.gpu.emulation.HostFrames`,
    e.g. planes decoded on the CPU); synchronous, so ``host`` may go at once."""
    luma, chroma = [np.ascontiguousarray(p) for p in host.luma], \
        [np.ascontiguousarray(p) for p in host.chroma]
    height, width = luma[0].shape
    frames = assemble_frames(
        [(y.ctypes.data, y.strides[0], c.ctypes.data, c.strides[0]) for y, c in zip(luma, chroma)],
        indices, height, width, luma[0].itemsize, host.sample_shift, host.conv, stream, pool)
    stream.synchronize()
    return frames


class NvdecDecoder:
    """Decodes chosen frames of files into :class:`DeviceFrames` with NVDEC.

    One ``SimpleDecoder`` serves file after file: it is opened with a maximum size
    (``max_size``, or the file's if larger) so that ``reconfigure_decoder`` may switch it to
    any file of the same codec and bit depth up to that size; another codec, bit depth or a
    larger file opens a new one. It works on a stream of its own; the caller's stream waits
    for its output, and the copies out of its surfaces are waited for before it decodes again
    (not before returning, so the next file decodes while this one is inferred).
    Stream metadata is scanned (``need_scanned_stream_metadata``): containers such as MKV and
    WebM carry no frame count, and without one ``SimpleDecoder`` refuses the file.
    """

    def __init__(self, device: int = 0, *, max_size: tuple[int, int] = NVDEC_MAX_SIZE,
                 pool: Optional[gpu.DevicePool] = None):
        self.device = device
        self.max_size = max_size
        self.pool = pool
        self.opened = 0          # SimpleDecoders created
        self.reconfigured = 0    # files served by reconfiguring the open one
        self._nvc = None
        self._decoder = None
        self._decoder_key: tuple = ()
        self._decoder_size = (0, 0)
        self._stream: Optional[gpu.Stream] = None
        self._copied: Optional[gpu.Event] = None
        self._caps: dict[tuple, dict] = {}

    def _start(self) -> None:
        if self._nvc is None:
            self._nvc = import_pynvvideocodec()
            gpu.use_device(self.device)
            self._stream = gpu.Stream()
            if self.pool is None:
                self.pool = gpu.device_pool(self.device)

    def _caps_refusal(self, path, info: MediaInfo) -> Optional[str]:
        """Ask the driver (once per codec, chroma format and bit depth) whether this GPU
        decodes the stream, with the values NVDEC's own demuxer reads from the file."""
        nvc = self._nvc
        demuxer = nvc.CreateDemuxer(filename=local_path(path))
        codec, chroma, depth = demuxer.GetNvCodecId(), demuxer.ChromaFormat(), demuxer.BitDepth()
        key = (str(codec), str(chroma), int(depth))
        if key not in self._caps:
            self._caps[key] = dict(nvc.GetDecoderCaps(gpuid=self.device, codec=codec,
                                                      chromaformat=chroma, bitdepth=depth) or {})
        what = f"{NVDEC_CODECS.get(info.codec, info.codec)} {int(depth)}-bit"
        return caps_refusal(self._caps[key], what, info.width, info.height)

    def _open(self, path, info: MediaInfo):
        """The open decoder switched to ``path``, or a new one."""
        key = (info.codec, info.bit_depth, info.pix_fmt)
        width, height = info.width, info.height
        if self._decoder is not None and self._decoder_key == key and \
                width <= self._decoder_size[0] and height <= self._decoder_size[1]:
            try:
                self._decoder.reconfigure_decoder(local_path(path))
                self.reconfigured += 1
                return self._decoder
            except _PROGRAMMING_ERRORS:
                raise
            except Exception:  # refused (see _library_error for what is not a refusal)
                self._decoder = None
        self._decoder = None  # release the old session before opening another
        wide, tall = self.max_size if width >= height else self.max_size[::-1]
        size = (max(width, wide), max(height, tall))
        nvc = self._nvc
        self._decoder = nvc.SimpleDecoder(local_path(path), gpu_id=self.device,
                                          cuda_context=gpu.current_context(),
                                          cuda_stream=int(self._stream), use_device_memory=True,
                                          max_width=size[0], max_height=size[1],
                                          need_scanned_stream_metadata=True,
                                          output_color_type=nvc.OutputColorType.NATIVE)
        self._decoder_key, self._decoder_size = key, size
        self.opened += 1
        return self._decoder

    def decode(self, path, indices: Sequence[int], info: MediaInfo, *,
               stream: gpu.Stream, colour: str = DEFAULT_COLOUR) -> DeviceFrames:
        """Frames ``indices`` (sorted, unique) of ``path``, copied on ``stream``, to be
        converted with ``colour``.

        Raises :class:`NvdecUnavailable` when NVDEC cannot deliver exactly those frames, and
        :class:`~.cuda.GpuError` when the GPU itself fails (out of memory, a broken context).
        """
        self._start()
        if self._copied is not None:  # the last file's copies out of the surfaces are done
            self._copied.synchronize()
            self._copied.close()
            self._copied = None
        wanted = [int(i) for i in indices]
        try:
            reason = self._caps_refusal(path, info)
            if reason:
                raise NvdecUnavailable(reason)
            index = frame_index(path)
            if index is None:
                raise NvdecUnavailable("its frames cannot be told apart by timestamp, so the "
                                       "frames NVDEC returns could not be checked")
            decoder = self._open(path, info)
            available = min(len(decoder), len(index))
            if wanted and wanted[-1] >= available:
                raise NvdecUnavailable(f"NVDEC finds {available} frames, frame {wanted[-1]} "
                                       "is needed")
            decoded = list(decoder.get_batch_frames_by_index(wanted))
            check_frames(decoded, wanted, index)
            self._order_after_decoder(decoded, stream)
            frames = self._keep(decoded, wanted, info, stream, colour)
        except NvdecUnavailable:
            raise
        except gpu.GpuError as exc:  # our own CUDA calls (copies): a refusal, or a GPU failure
            if exc.status in COPY_REFUSALS:
                raise NvdecUnavailable(f"copying NVDEC's frames failed: {exc}") from None
            raise
        except _PROGRAMMING_ERRORS:
            raise
        except Exception as exc:  # PyNvVideoCodec raises RuntimeError, its own types, Exception
            self._decoder = None
            raise self._library_error(exc, info) from None
        self._copied = gpu.Event().record(stream)
        return frames

    def _library_error(self, exc: Exception, info: MediaInfo) -> gpu.GpuError:
        """What a PyNvVideoCodec exception means: out of memory and a broken CUDA context are
        GPU failures; anything else is NVDEC declining the stream."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        first = text[:300]
        if any(word in text.lower() for word in _OUT_OF_MEMORY_TEXT):
            return gpu.GpuError(f"out of GPU memory while NVDEC decoded: {first}",
                                status="CUDA_ERROR_OUT_OF_MEMORY")
        fault = gpu.device_fault()
        if fault:
            return gpu.GpuError(f"the CUDA context failed ({fault}) while NVDEC decoded: {first}",
                                status=fault)
        return NvdecUnavailable(with_container_hint(
            f"NVDEC cannot decode this {info.codec} stream: {first}"))

    def _order_after_decoder(self, decoded: Sequence, stream: gpu.Stream) -> None:
        """Make ``stream`` wait for the decoder's post-processing of these frames (no host wait
        where the frames offer ``WaitOnCUStream``)."""
        if all(callable(getattr(f, "WaitOnCUStream", None)) for f in decoded):
            for frame in decoded:
                frame.WaitOnCUStream(int(stream))
        else:
            self._stream.synchronize()

    def _keep(self, decoded, wanted, info: MediaInfo, stream: gpu.Stream,
              colour: str = DEFAULT_COLOUR) -> DeviceFrames:
        """Copy the decoder's surfaces into one pooled buffer (device to device)."""
        sources = [frame_sources(f, info.height, info.width) for f in decoded]
        sample_bytes = 1 if info.bit_depth <= 8 else 2
        if any(s[4] != sample_bytes for s in sources):
            raise NvdecUnavailable(f"NVDEC returned {sources[0][4]}-byte samples for a "
                                   f"{info.bit_depth}-bit stream")
        return assemble_frames(
            [s[:4] for s in sources], wanted, info.height, info.width, sample_bytes,
            16 - info.bit_depth if sample_bytes == 2 else 0,
            frame_conversion(colour, info.matrix, info.full_range, info.bit_depth, info.height,
                             info.width, 1, 1), stream, self.pool)

    def close(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()
            self._copied.close()
            self._copied = None
        self._decoder = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
