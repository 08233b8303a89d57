"""The GPU fast path: NVDEC decoding, the view kernels and TensorRT, frames never leaving the GPU.

:class:`ViewKernels` launches ``kernels/views.cu`` (compiled by NVRTC) once per view, writing one
view of every clip of a batch straight into a TensorRT input buffer, from the tables of
:mod:`.tables`. :class:`GpuPipeline` is a scorer like :class:`~cover_engine.runtime.scoring.Scorer`
(``score(path) -> FileScore``): NVDEC (:mod:`.nvdec`) decodes the needed frames, the kernels make
the views, the backend's engines score them; files NVDEC cannot take go through the CPU path
instead, after a one-line notice. The kernels' maths in numpy, for the tests, is
:mod:`.emulation`.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.gpu.kernels import VIEW_KERNELS
from cover_engine.runtime.gpu.nvdec import NvdecDecoder, nvdec_refusal
from cover_engine.runtime.gpu.tables import ViewTables, view_tables
from cover_engine.runtime.engines.base import DeviceBackend, Pending
from cover_engine.runtime.errors import NvdecUnavailable
from cover_engine.runtime.constants import DEFAULT_COLOUR
from cover_engine.runtime.media.colour import SwsConversion
from cover_engine.runtime.media.decode import MediaInfo, applies_rotation, probe
from cover_engine.runtime.results import FileScore, file_score
from cover_engine.runtime.views.assemble import load_views, plan_views
from cover_engine.runtime.views.sampling import clip_rng, needed_frames

__all__ = ["ViewKernels", "GpuPipeline", "Submitted", "BLOCK"]

#: The thread block the launches use (a warp along each output row).
BLOCK = (32, 8, 1)


def colour_args(conv) -> tuple[int, dict[str, np.ndarray]]:
    """The kernels' colour arguments: ``sws_path`` (-1 for the exact conversion) and the arrays
    ``yuv`` (float32 constants), ``sws`` (integer constants), ``sws_rows``, ``sws_cols``."""
    if isinstance(conv, SwsConversion):
        return conv.path_id, {"yuv": np.zeros(8, np.float32), "sws": conv.ints,
                              "sws_rows": conv.rows, "sws_cols": conv.cols}
    empty = np.zeros(1, np.int32)
    return -1, {"yuv": conv.as_array(), "sws": empty, "sws_rows": empty, "sws_cols": empty}


def _packed_tables(tables: ViewTables, conv) -> tuple[np.ndarray, dict[str, int]]:
    """All host tables of one launch in one byte array (256-byte aligned parts) and the offset
    of each part, so one upload serves the whole launch."""
    rows, cols = tables.rows, tables.cols
    parts = {**colour_args(conv)[1], "norm": tables.norm, "frame_of": tables.frame_of,
             "rows0": rows.index0.astype(np.int32), "rows1": rows.index1.astype(np.int32),
             "wrow": rows.weight.astype(np.float32),
             "cols0": cols.index0.astype(np.int32), "cols1": cols.index1.astype(np.int32),
             "wcol": cols.weight.astype(np.float32)}
    if tables.origins is not None:
        parts["origins"] = tables.origins
    offsets, chunks, size = {}, [], 0
    for name, array in parts.items():
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        offsets[name] = size
        padded = -(-max(raw.size, 1) // 256) * 256
        chunks.append(np.pad(raw, (0, padded - raw.size)))
        size += padded
    return np.concatenate(chunks), offsets


class ViewKernels:
    """``views.cu`` compiled by NVRTC for the current GPU, launched one view at a time.

    Each launch's tables go into a buffer from ``pool`` (no ``cudaMalloc`` / ``cudaFree`` per
    launch: ``cudaFree`` would wait for the whole device)."""

    def __init__(self, device: int = 0, pool: Optional[gpu.DevicePool] = None):
        module = gpu.load_module(VIEW_KERNELS, device)
        self.resize = module.kernel("cover_resize_view")
        self.fragments = module.kernel("cover_fragments_view")
        self.pool = pool if pool is not None else gpu.device_pool(device)

    def launch(self, frames, tables: ViewTables, out_ptr: int, out_dtype: str,
               out_shape: Sequence[int], stream: gpu.Stream) -> gpu.Lease:
        """Write one view of every clip into the ``(B, 3, T, H, W)`` buffer at ``out_ptr``
        (``B >= clips``; clips fill the first items). ``frames`` is a :class:`.nvdec.DeviceFrames`.
        Returns the tables' lease, to be closed once ``stream`` has run the kernel."""
        if tuple(out_shape[1:]) != tables.shape[1:] or out_shape[0] < tables.clips:
            raise ValueError(f"{tables.spec.name} view {tables.shape} does not fit the input "
                             f"buffer {tuple(out_shape)}")
        if out_dtype not in ("float32", "float16"):
            raise ValueError(f"view buffers must be float32 or float16, not {out_dtype}")
        host, offset = _packed_tables(tables, frames.conv)
        table = self.pool.take(host.nbytes)
        try:
            table.upload(host, stream)
            self._launch(frames, tables, table.ptr, offset, out_ptr, out_dtype, out_shape, stream)
        except BaseException:
            try:
                stream.synchronize()  # the queued upload may still write into the lease
            finally:
                table.close()
            raise
        return table

    def _launch(self, frames, tables: ViewTables, base: int, offset: Mapping[str, int],
                out_ptr: int, out_dtype: str, out_shape: Sequence[int],
                stream: gpu.Stream) -> None:
        at = {name: np.uint64(base + off) for name, off in offset.items()}
        _, _, t, h, w = out_shape
        strides = (np.int64(3 * t * h * w), np.int64(t * h * w), np.int64(h * w))
        head = [np.uint64(frames.luma_table), np.uint64(frames.chroma_table),
                np.int32(frames.luma_pitch), np.int32(frames.chroma_pitch),
                np.int32(frames.height), np.int32(frames.width), np.int32(frames.sample_bytes),
                np.int32(frames.sample_shift), at["yuv"], np.int32(colour_args(frames.conv)[0]),
                at["sws"], at["sws_rows"], at["sws_cols"], at["frame_of"], np.int32(tables.frames)]
        tail = [at["norm"], np.uint64(out_ptr), np.int32(out_dtype == "float16"), *strides]
        grid = (-(-tables.spec.out_w // BLOCK[0]), -(-tables.spec.out_h // BLOCK[1]),
                len(tables.frame_of))
        spec = tables.spec
        if spec.kind == "resize":
            args = head + [at["rows0"], at["rows1"], at["wrow"], at["cols0"], at["cols1"],
                           at["wcol"], np.int32(spec.out_h), np.int32(spec.out_w)] + tail
            self.resize.launch(grid, BLOCK, args, stream)
        else:
            args = head + [at["origins"], np.int32(tables.aligned), np.int32(spec.fragments_h),
                           np.int32(spec.fragments_w), np.int32(spec.fsize_h),
                           np.int32(spec.fsize_w), np.int32(tables.upsample), at["rows0"],
                           at["rows1"], at["wrow"], at["cols0"], at["cols1"], at["wcol"]] + tail
            self.fragments.launch(grid, BLOCK, args, stream)


# ----------------------------------------------------------------------------- the fast path


class Submitted(NamedTuple):
    """A file on its way through :class:`GpuPipeline`."""

    pending: Pending         # .result() -> score maps
    info: MediaInfo
    nvdec: bool              # decoded by NVDEC (False: the CPU path was used)
    started: float           # perf_counter() when the file was submitted
    colour: str = DEFAULT_COLOUR  # the YUV -> RGB conversion used


class GpuPipeline:
    """Files -> NVDEC -> view kernels -> TensorRT, decoded frames never leaving the GPU.

    A scorer like :class:`~cover_engine.runtime.scoring.Scorer`: the same constructor settings
    (``seed``, ``clips``: clips of one file form one batch), ``score(path) -> FileScore``,
    ``score_many(paths)``, ``close()``. ``backend`` is a
    :class:`~cover_engine.runtime.engines.base.DeviceBackend` (the TensorRT backend). Images, and videos NVDEC cannot take (codec, chroma format, bit
    depth this GPU lacks, interlacing, rotation asked for, no PyNvVideoCodec), take the CPU path
    (:func:`~cover_engine.runtime.views.assemble.load_views`) and are uploaded; each distinct reason is announced once, in one
    line. A GPU failure (out of memory, a broken CUDA context) is raised, never hidden by the
    CPU path. :meth:`score_many` keeps the backend's slots busy: the next file is decoded while
    the one before is being inferred.
    """

    def __init__(self, backend: DeviceBackend, *, seed: Optional[int] = None, clips: int = 1,
                 rotate: Optional[bool] = None, colour: str = DEFAULT_COLOUR, decoder=None,
                 log: Callable[[str], None] = print):
        if clips < 1:
            raise ValueError("clips must be at least 1")
        self.backend = backend
        self.name = backend.name
        self.seed = seed
        self.clips = clips
        self.rotate = rotate
        self.colour = colour
        self.decoder = decoder if decoder is not None else NvdecDecoder(backend.device_index)
        self.kernels = ViewKernels(backend.device_index)
        self.log = log
        self._announced: set[str] = set()
        self.nvdec_files = 0     # files decoded by NVDEC
        self.cpu_files = 0       # files that took the CPU path

    def submit(self, path) -> Submitted:
        """Start scoring ``path``; returns once the GPU has the work queued (decoding is done by
        then; inference runs on)."""
        seed, clips, colour = self.seed, self.clips, self.colour
        started = time.perf_counter()
        rotate = applies_rotation(self.rotate, colour)
        info = probe(path)
        reason = nvdec_refusal(info, rotate=rotate)
        if reason is None:
            specs = self.backend.specs
            plans = [plan_views(info.num_frames, info.height, info.width, specs,
                                rng=clip_rng(seed, k), clip=k, clips=clips) for k in range(clips)]
            needed = needed_frames(*({n: p.indices for n, p in plan.items()} for plan in plans))
            slot = self.backend.acquire(clips, "video")
            try:
                frames = self.decoder.decode(path, needed, info, stream=slot.stream,
                                             colour=colour)
            except NvdecUnavailable as exc:
                reason = str(exc)
            else:
                slot.hold(frames)
                slot_of = {int(i): s for s, i in enumerate(needed.tolist())}
                for name in specs:
                    view = slot.view(name)
                    tables = view_tables([plan[name] for plan in plans], slot_of, info.height,
                                         info.width)
                    slot.hold(self.kernels.launch(frames, tables, view.ptr, view.dtype,
                                                  view.shape, slot.stream))
                self.nvdec_files += 1
                return Submitted(self.backend.enqueue(slot), info, True, started, colour)
        if reason not in self._announced:
            self._announced.add(reason)
            self.log(f"cover-run: NVDEC not used ({reason}); decoding on the CPU")
        views, info = load_views(path, self.backend.specs, seed=seed, clips=clips, rotate=rotate,
                                 colour=colour)
        self.cpu_files += 1
        return Submitted(self.backend.submit(views), info, False, started, colour)

    def _finish(self, path, job: Submitted) -> FileScore:
        return file_score(path, job.pending.result(), job.info,
                          self.name + ("+nvdec" if job.nvdec else ""), job.started,
                          colour=job.colour)

    def score(self, path) -> FileScore:
        """Scores of one file (clip scores averaged), as
        :class:`~cover_engine.runtime.scoring.Scorer` gives them; the backend name gains
        ``+nvdec`` when NVDEC decoded the file."""
        return self._finish(path, self.submit(path))

    def score_many(self, paths: Iterable) -> Iterator[tuple[object, Union[FileScore, Exception]]]:
        """``(path, FileScore or the exception it raised)`` for each file, in order, with up to
        one file per backend slot in flight: while the GPU infers one file, the next is
        decoded. A file that fails does not stop the others."""
        depth = max(1, len(getattr(self.backend, "_slots", ())) or 1)
        queue: collections.deque = collections.deque()

        def finish_one():
            path, job = queue.popleft()
            try:
                return path, self._finish(path, job)
            except Exception as exc:  # reported for this file; the batch goes on
                return path, exc

        for path in paths:
            try:
                job = self.submit(path)
            except Exception as exc:
                while queue:
                    yield finish_one()
                yield path, exc
                continue
            queue.append((path, job))
            if len(queue) >= depth:
                yield finish_one()
        while queue:
            yield finish_one()

    def close(self) -> None:
        """Release the backend (its engines, buffers and streams)."""
        self.backend.close()

    def __enter__(self) -> "GpuPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
