"""NVDEC decoding with PyNvVideoCodec: only the frames a sample needs, kept on the GPU.

:class:`NvdecDecoder` asks PyNvVideoCodec's ``SimpleDecoder`` for exactly the needed frame
indices (``get_batch_frames_by_index``: it seeks to the key frame before each run of wanted
frames and decodes from there) in the native semi-planar output -- NV12 for 8-bit 4:2:0, P016 for
10/12-bit -- and copies them, device to device on the caller's stream, into one buffer of its
own: the decoder's surfaces are then free for its next call, and the frames live exactly as long
as the :class:`DeviceFrames` that the view kernels read.

Frame indices are PyNvVideoCodec's (presentation order, as the CPU path's count of decoded
pictures for ordinary files; the GPU tests compare NVDEC frames with PyAV's). Colour constants
come from the CPU path's probe of the same file (:func:`~.decode.probe`), so both paths use the
same matrix and range.

:func:`nvdec_refusal` says, without touching a GPU, why a file must take the CPU path instead
(images, non-4:2:0 chroma, more than 12 bits, rotation asked for, no PyNvVideoCodec); decoding
errors (a codec NVDEC lacks, a file shorter than its header) raise :class:`NvdecUnavailable`,
which the pipeline also answers with the CPU path.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.media.colour import YuvToRgb, yuv_to_rgb_coefficients
from cover_engine.runtime.media.decode import MediaInfo
from cover_engine.runtime.errors import NvdecUnavailable

#: Pixel formats NVDEC returns as NV12 / P016 (4:2:0, 8 to 12 bits).
_SEMI_PLANAR_SOURCE = re.compile(r"^yuvj?420p(10|12)?(le|be)?$")
#: Row alignment of the frame buffer (bytes), as CUDA pitched allocations use.
PITCH_ALIGN = 256


@functools.lru_cache(maxsize=1)
def _pynvvideocodec() -> tuple[object, str]:
    """The module and ``""``, or ``None`` and why not (tried once per process)."""
    try:
        import PyNvVideoCodec
    except ImportError:
        return None, "PyNvVideoCodec is not installed"
    except Exception as exc:  # its import probes the driver and raises RuntimeError without one
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        return None, f"PyNvVideoCodec cannot start: {first}"
    return PyNvVideoCodec, ""


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
    if rotate and info.rotation:
        return "rotation is applied on the CPU path"
    try:
        import_pynvvideocodec()
    except NvdecUnavailable as exc:
        return str(exc)
    return None


@dataclass
class PlaneLayout:
    """One decoded plane as PyNvVideoCodec exposes it (CUDA Array Interface)."""

    ptr: int
    rows: int
    row_bytes: int      # bytes of pixel data per row
    pitch: int          # bytes from one row to the next
    sample_bytes: int


def frame_planes(frame) -> tuple[PlaneLayout, PlaneLayout]:
    """Luma and interleaved-chroma planes of a decoded NV12 / P016 frame.

    PyNvVideoCodec's ``frame.cuda()`` lists one CUDA Array Interface per plane: luma
    ``(H, W, 1)`` and chroma ``(H/2, W/2, 2)``, ``|u1`` (NV12) or ``|u2`` (P016).
    """
    planes = list(frame.cuda())
    if len(planes) != 2:
        raise NvdecUnavailable(f"decoder returned {len(planes)} planes, not semi-planar 4:2:0")
    out = []
    for plane in planes:
        cai = plane.__cuda_array_interface__
        shape = tuple(int(s) for s in cai["shape"])
        itemsize = int(np.dtype(cai["typestr"]).itemsize)
        rows, cols = shape[0], int(np.prod(shape[1:]))
        strides = cai.get("strides")
        pitch = int(strides[0]) if strides else cols * itemsize
        out.append(PlaneLayout(int(cai["data"][0]), rows, cols * itemsize, pitch, itemsize))
    luma, chroma = out
    if luma.sample_bytes != chroma.sample_bytes or chroma.rows != -(-luma.rows // 2):
        raise NvdecUnavailable("decoder output is not NV12 / P016")
    return luma, chroma


@dataclass
class DeviceFrames:
    """Decoded frames on the GPU in the layout ``kernels/views.cu`` reads.

    Frame ``s`` (in the order of ``indices``) has its luma plane at ``luma[s]`` and its chroma
    plane at ``chroma[s]``; ``luma_table`` / ``chroma_table`` are the device copies of those
    address arrays that the kernels take.
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
    conv: YuvToRgb
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
                    conv: YuvToRgb, stream: gpu.Stream) -> DeviceFrames:
    """Copy frames, given as ``(luma address, luma pitch, chroma address, chroma pitch)`` on the
    host or the device, into one new device buffer laid out for the kernels; queued on
    ``stream`` (host sources must stay alive until it has run)."""
    pitch, luma_bytes, frame_bytes = frame_buffer_layout(height, width, sample_bytes)
    pool = gpu.DeviceBuffer(frame_bytes * len(sources))
    chroma_rows, chroma_row_bytes = -(-height // 2), 2 * -(-width // 2) * sample_bytes
    luma_ptrs, chroma_ptrs = [], []
    for s, (luma, luma_pitch, chroma, chroma_pitch) in enumerate(sources):
        dst = pool.ptr + s * frame_bytes
        gpu.copy_2d(dst, pitch, luma, luma_pitch, width * sample_bytes, height, stream)
        gpu.copy_2d(dst + luma_bytes, pitch, chroma, chroma_pitch, chroma_row_bytes,
                    chroma_rows, stream)
        luma_ptrs.append(dst)
        chroma_ptrs.append(dst + luma_bytes)
    frames = DeviceFrames(indices=np.asarray(indices, np.int64), height=height, width=width,
                          sample_bytes=sample_bytes, sample_shift=sample_shift, luma_pitch=pitch,
                          chroma_pitch=pitch, luma=gpu.pointer_array(luma_ptrs),
                          chroma=gpu.pointer_array(chroma_ptrs), conv=conv)
    tables = gpu.DeviceBuffer(2 * frames.luma.nbytes)
    tables.upload(np.concatenate([frames.luma, frames.chroma]), stream)
    frames.luma_table, frames.chroma_table = tables.ptr, tables.ptr + frames.luma.nbytes
    frames._owned += [pool, tables]
    return frames


def upload_frames(host, indices: Sequence[int], stream: gpu.Stream) -> DeviceFrames:
    """Device copies of host frames in the kernels' layout (a :class:`~.gpu_views.HostFrames`,
    e.g. planes decoded on the CPU); synchronous, so ``host`` may go at once."""
    luma, chroma = [np.ascontiguousarray(p) for p in host.luma], \
        [np.ascontiguousarray(p) for p in host.chroma]
    height, width = luma[0].shape
    frames = assemble_frames(
        [(y.ctypes.data, y.strides[0], c.ctypes.data, c.strides[0]) for y, c in zip(luma, chroma)],
        indices, height, width, luma[0].itemsize, host.sample_shift, host.conv, stream)
    stream.synchronize()
    return frames


class NvdecDecoder:
    """Decodes chosen frames of files into :class:`DeviceFrames` with NVDEC.

    One ``SimpleDecoder`` is kept and reconfigured from file to file (PyNvVideoCodec caches
    decoder sessions, so files of one size and codec reuse one); it works on a stream of its own,
    which is synchronised before its frames are copied on the caller's stream.
    """

    def __init__(self, device: int = 0):
        self.device = device
        self._nvc = None
        self._decoder = None
        self._stream: Optional[gpu.Stream] = None

    def _open(self, path):
        nvc = self._nvc
        if self._decoder is not None:
            try:
                self._decoder.reconfigure_decoder(str(path))
                return self._decoder
            except Exception:  # another codec or a larger size: start a fresh decoder
                self._decoder = None
        self._decoder = nvc.SimpleDecoder(str(path), gpu_id=self.device,
                                          cuda_context=gpu.current_context(),
                                          cuda_stream=int(self._stream), use_device_memory=True,
                                          output_color_type=nvc.OutputColorType.NATIVE)
        return self._decoder

    def decode(self, path, indices: Sequence[int], info: MediaInfo, *,
               stream: gpu.Stream) -> DeviceFrames:
        """Frames ``indices`` (sorted, unique) of ``path``, copied on ``stream``.

        Raises :class:`NvdecUnavailable` when NVDEC cannot deliver them all.
        """
        if self._nvc is None:
            self._nvc = import_pynvvideocodec()
            gpu.use_device(self.device)
            self._stream = gpu.Stream()
        wanted = [int(i) for i in indices]
        try:
            decoder = self._open(path)
            available = len(decoder)
            if wanted and wanted[-1] >= available:
                raise NvdecUnavailable(f"NVDEC finds {available} frames, frame {wanted[-1]} "
                                       "is needed")
            decoded = decoder.get_batch_frames_by_index(wanted)
            self._stream.synchronize()
        except NvdecUnavailable:
            raise
        except Exception as exc:  # PyNvVideoCodec raises its own exception types
            self._decoder = None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NvdecUnavailable(f"NVDEC cannot decode {info.codec}: {first}") from None
        if len(decoded) != len(wanted):
            raise NvdecUnavailable(f"NVDEC returned {len(decoded)} of {len(wanted)} frames")
        return self._keep(decoded, wanted, info, stream)

    def _keep(self, decoded, wanted, info: MediaInfo, stream: gpu.Stream) -> DeviceFrames:
        """Copy the decoder's surfaces into one owned buffer (device to device)."""
        layouts = [frame_planes(f) for f in decoded]
        sample_bytes = layouts[0][0].sample_bytes
        for luma, chroma in layouts:
            if luma.rows < info.height or luma.row_bytes < info.width * sample_bytes or \
                    luma.sample_bytes != sample_bytes:
                raise NvdecUnavailable(f"NVDEC frame of {luma.rows} rows does not match the "
                                       f"stream's {info.width}x{info.height}")
        frames = assemble_frames(
            [(luma.ptr, luma.pitch, chroma.ptr, chroma.pitch) for luma, chroma in layouts],
            wanted, info.height, info.width, sample_bytes,
            16 - info.bit_depth if sample_bytes == 2 else 0,
            yuv_to_rgb_coefficients(info.matrix, info.full_range, info.bit_depth), stream)
        stream.synchronize()  # the decoder's surfaces may be reused once we return
        return frames
