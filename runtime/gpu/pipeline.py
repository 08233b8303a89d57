"""The three views made on the GPU from decoded NV12 / P016 frames, one kernel launch per view.

The CPU path (:mod:`.views`) plans every frame index and crop position before decoding
(:func:`~.views.plan_views`); this module turns those very plans into the tables the kernels of
``kernels/views.cu`` read (:func:`view_tables`) -- frame slots, bilinear taps
(:mod:`.geometry`), crop origins, colour constants (:mod:`.colour`) and normalisation -- so the
kernels make no sampling decision of their own. Each launch writes one view of every clip of a
batch straight into a TensorRT input buffer.

:func:`emulate_view` is the kernels' maths in numpy (same tables, same float32 operations in the
same order, same rounding): the tests hold it to the CPU views exactly, which checks the kernels'
arithmetic on machines without a GPU; on a GPU the tests hold the kernels to it.

:class:`GpuPipeline` is the whole fast path: NVDEC decoding (:mod:`.nvdec`), these kernels and
the TensorRT backend, with decoded frames never leaving the GPU; files NVDEC cannot take go
through the CPU path instead, after a one-line notice.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.media.colour import SwsConversion, YuvToRgb, sws_levels
from cover_engine.runtime.constants import DEFAULT_COLOUR, ViewSpec
from cover_engine.runtime.media.decode import MediaInfo, applies_rotation, probe
from cover_engine.runtime.views.geometry import AxisTable, resize_table
from cover_engine.runtime.gpu.nvdec import NvdecDecoder, NvdecUnavailable, nvdec_refusal
from cover_engine.runtime.results import FileScore
from cover_engine.runtime.views.sampling import clip_rng, needed_frames
from cover_engine.runtime.scoring import file_score
from cover_engine.runtime.views.assemble import ViewPlan, load_views, plan_views

#: Kernel file, and the thread block the launches use (a warp along each output row).
KERNEL_FILE = "views.cu"
BLOCK = (32, 8, 1)


@dataclass(frozen=True)
class ViewTables:
    """Everything one view kernel reads besides the frames, for all clips of a batch.

    ``rows``/``cols`` are the resize taps (resize views) or the upsampling taps over the whole
    upsampled frame (fragments views of small frames; empty otherwise).
    """

    spec: ViewSpec
    frames: int                          # T, view frames per clip
    frame_of: np.ndarray                 # int32 (clips * T,): frame slot of each view frame
    rows: AxisTable
    cols: AxisTable
    origins: Optional[np.ndarray]        # int32 (clips, T // aligned, 2, fh, fw), fragments only
    aligned: int
    upsample: bool
    norm: np.ndarray                     # float32 (6,): mean rgb, std rgb

    @property
    def clips(self) -> int:
        return len(self.frame_of) // self.frames

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """The view batch it makes, ``(clips, 3, T, H, W)``."""
        return (self.clips, 3, self.frames, self.spec.out_h, self.spec.out_w)


def _empty_table() -> AxisTable:
    return AxisTable(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def view_tables(plans: Sequence[ViewPlan], slot_of: Mapping[int, int], height: int,
                width: int) -> ViewTables:
    """Kernel tables of one view over clips ``plans`` (one :class:`~.views.ViewPlan` per clip,
    all of the same view); ``slot_of`` maps a frame index to its position among decoded frames."""
    spec = plans[0].spec
    frames = len(plans[0].indices)
    frame_of = np.array([slot_of[int(i)] for p in plans for i in p.indices], np.int32)
    norm = np.array(list(spec.mean) + list(spec.std), np.float32)
    if spec.kind == "resize":
        return ViewTables(spec, frames, frame_of, resize_table(height, spec.out_h),
                          resize_table(width, spec.out_w), None, 1, False, norm)
    grid = plans[0].grid
    if (grid.height, grid.width) != (height, width):
        raise ValueError(f"plan made for {grid.height}x{grid.width} frames, frames are "
                         f"{height}x{width}")
    rows, cols = grid.tables() if grid.upsample else (_empty_table(), _empty_table())
    origins = np.stack([p.origins for p in plans]).astype(np.int32)
    return ViewTables(spec, frames, frame_of, rows, cols, origins, plans[0].aligned,
                      bool(grid.upsample), norm)


# ----------------------------------------------------------------------------- numpy emulation


@dataclass(frozen=True)
class HostFrames:
    """Decoded frames in the kernels' memory layout, on the host: per frame a luma plane
    ``(H, W)`` and an interleaved chroma plane ``(ceil(H/2), 2 * ceil(W/2))`` of code values as
    stored (uint8 NV12, or uint16 P016 with the value in the high bits)."""

    luma: Sequence[np.ndarray]
    chroma: Sequence[np.ndarray]
    sample_shift: int
    conv: Union[YuvToRgb, SwsConversion]

    def rgb(self, slot: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """RGB levels, float32 ``rows.shape + (3,)``, of pixels ``(rows, cols)`` (cover_rgb)."""
        f32, c = np.float32, self.conv
        luma, chroma = self.luma[slot], self.chroma[slot]
        rows, cols = np.broadcast_arrays(rows, cols)
        if isinstance(c, SwsConversion):  # cover_rgb_decord: the CPU formula on NV12 / P016
            shift = self.sample_shift
            levels = sws_levels(c, luma[rows, cols] >> shift,
                                lambda k, rr, cc: chroma[rr, cc * 2 + k] >> shift, rows, cols)
            return levels.astype(f32)
        Y = (luma[rows, cols] >> self.sample_shift).astype(f32)
        U = (chroma[rows >> 1, (cols >> 1) * 2] >> self.sample_shift).astype(f32)
        V = (chroma[rows >> 1, (cols >> 1) * 2 + 1] >> self.sample_shift).astype(f32)
        y = (Y - f32(c.y_offset)) * f32(c.y_scale)
        u = (U - f32(c.c_offset)) * f32(c.c_scale)
        v = (V - f32(c.c_offset)) * f32(c.c_scale)
        channels = (y + f32(c.r_v) * v, (y - f32(c.g_u) * u) - f32(c.g_v) * v, y + f32(c.b_u) * u)
        return np.stack([_level(ch) for ch in channels], axis=-1)


@dataclass(frozen=True)
class RgbFrames:
    """Frames already in RGB (the reference vectors' form), to check the geometry alone."""

    frames: Sequence[np.ndarray]

    def rgb(self, slot: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.frames[slot][rows, cols].astype(np.float32)


def semi_planar(y: np.ndarray, u: np.ndarray, v: np.ndarray, bit_depth: int = 8
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Planar 4:2:0 code values -> NV12 (8 bit) or P016 (more) luma and chroma planes, and the
    shift the kernels undo; what NVDEC hands over, made from what PyAV decodes."""
    chroma = np.stack([u, v], axis=-1).reshape(u.shape[0], 2 * u.shape[1])
    if bit_depth == 8:
        return y.astype(np.uint8), chroma.astype(np.uint8), 0
    shift = 16 - bit_depth
    return (y.astype(np.uint16) << shift), (chroma.astype(np.uint16) << shift), shift


def _level(value: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(value), 0, 255).astype(np.float32)


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, as CUDA's ``__fmaf_rn``: the float32 product is exact
    in float64, the sum is rounded there and then to float32 (which differs from a true fma only
    when that second rounding meets an exact float32 tie)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c).astype(np.float32)


def _bilinear(frames, slot: int, r0, r1, wy1, c0, c1, wx1, prescale: bool) -> np.ndarray:
    """Kernel cover_bilinear over 2-D arrays of taps (rows and columns broadcast together)."""
    f32 = np.float32
    wy0, wx0 = (f32(1) - wy1)[..., None], (f32(1) - wx1)[..., None]
    wy1, wx1 = wy1[..., None], wx1[..., None]
    a, b = frames.rgb(slot, r0, c0), frames.rgb(slot, r0, c1)
    c, d = frames.rgb(slot, r1, c0), frames.rgb(slot, r1, c1)
    if prescale:
        a, b, c, d = (x / f32(255) for x in (a, b, c, d))
    top = fma32(a, wx0, b * wx1)
    bottom = fma32(c, wx0, d * wx1)
    return fma32(top, wy0, bottom * wy1)


def emulate_levels(tables: ViewTables, frames) -> np.ndarray:
    """What the kernel computes before normalising: 8-bit levels ``(clips, 3, T, H, W)`` uint8.
    ``frames`` is a :class:`HostFrames` (or :class:`RgbFrames`) indexed by frame slot."""
    spec = tables.spec
    out = np.zeros((len(tables.frame_of), spec.out_h, spec.out_w, 3), np.float32)
    done: dict[tuple, int] = {}  # a frame sampled the same way twice is computed once
    for k, slot in enumerate(tables.frame_of.tolist()):
        clip, t = divmod(k, tables.frames)
        key = (slot,) if spec.kind == "resize" else \
            (slot, tables.origins[clip, t // tables.aligned].tobytes())
        if key in done:
            out[k] = out[done[key]]
            continue
        done[key] = k
        if spec.kind == "resize":
            r, c = tables.rows, tables.cols
            grid = np.ix_(np.arange(spec.out_h), np.arange(spec.out_w))
            value = _bilinear(frames, slot, r.index0[grid[0]], r.index1[grid[0]],
                              r.weight[grid[0]], c.index0[grid[1]], c.index1[grid[1]],
                              c.weight[grid[1]], prescale=False)
            out[k] = _level(value)
            continue
        origin = tables.origins[clip, t // tables.aligned]
        rows = np.repeat(np.repeat(origin[0], spec.fsize_h, 0), spec.fsize_w, 1) + \
            np.tile(np.arange(spec.fsize_h), spec.fragments_h)[:, None]
        cols = np.repeat(np.repeat(origin[1], spec.fsize_h, 0), spec.fsize_w, 1) + \
            np.tile(np.arange(spec.fsize_w), spec.fragments_w)[None, :]
        if tables.upsample:
            r, c = tables.rows, tables.cols
            value = _bilinear(frames, slot, r.index0[rows], r.index1[rows], r.weight[rows],
                              c.index0[cols], c.index1[cols], c.weight[cols], prescale=True)
            out[k] = np.trunc(np.clip(value * np.float32(255), 0, 255))
        else:
            out[k] = frames.rgb(slot, rows, cols)
    levels = out.astype(np.uint8).reshape(tables.clips, tables.frames, spec.out_h, spec.out_w, 3)
    return np.ascontiguousarray(levels.transpose(0, 4, 1, 2, 3))


def emulate_view(tables: ViewTables, frames) -> np.ndarray:
    """The kernel's output: normalised float32 ``(clips, 3, T, H, W)``."""
    levels = emulate_levels(tables, frames).astype(np.float32)
    mean = tables.norm[:3].reshape(1, 3, 1, 1, 1)
    std = tables.norm[3:].reshape(1, 3, 1, 1, 1)
    return (levels - mean) / std


# ----------------------------------------------------------------------------- GPU launches


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
        module = gpu.load_module(KERNEL_FILE, device)
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

    pending: object          # trt_runner.Pending: .result() -> score maps
    info: MediaInfo
    nvdec: bool              # decoded by NVDEC (False: the CPU path was used)
    started: float           # perf_counter() when the file was submitted
    colour: str = DEFAULT_COLOUR  # the YUV -> RGB conversion used


class GpuPipeline:
    """Files -> NVDEC -> view kernels -> TensorRT, decoded frames never leaving the GPU.

    ``backend`` is a :class:`~.trt_runner.TrtBackend`; clips of one file form one batch, as in
    :class:`~.scoring.Scorer`. Images, and videos NVDEC cannot take (codec, chroma format, bit
    depth this GPU lacks, interlacing, rotation asked for, no PyNvVideoCodec), take the CPU path
    (:func:`~.views.load_views`) and are uploaded; each distinct reason is announced once, in one
    line. A GPU failure (out of memory, a broken CUDA context) is raised, never hidden by the
    CPU path. :meth:`score_many` keeps the backend's slots busy: the next file is decoded while
    the one before is being inferred.
    """

    def __init__(self, backend, *, decoder=None, log: Callable[[str], None] = print):
        self.backend = backend
        self.decoder = decoder if decoder is not None else NvdecDecoder(backend.device_index)
        self.kernels = ViewKernels(backend.device_index)
        self.log = log
        self._announced: set[str] = set()
        self.nvdec_files = 0     # files decoded by NVDEC
        self.cpu_files = 0       # files that took the CPU path

    def submit(self, path, *, seed: Optional[int] = None, clips: int = 1,
               rotate: Optional[bool] = None, colour: str = DEFAULT_COLOUR) -> Submitted:
        """Start scoring ``path`` (``clips`` clips as one batch); returns once the GPU has the
        work queued (decoding is done by then; inference runs on)."""
        started = time.perf_counter()
        rotate = applies_rotation(rotate, colour)
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
                          self.backend.name + ("+nvdec" if job.nvdec else ""), job.started,
                          colour=job.colour)

    def score(self, path, *, seed: Optional[int] = None, clips: int = 1,
              rotate: Optional[bool] = None, colour: str = DEFAULT_COLOUR) -> FileScore:
        """Scores of one file (clip scores averaged), as :class:`~.scoring.Scorer` gives them."""
        return self._finish(path, self.submit(path, seed=seed, clips=clips, rotate=rotate,
                                              colour=colour))

    def score_many(self, paths: Iterable, *, seed: Optional[int] = None, clips: int = 1,
                   rotate: Optional[bool] = None, colour: str = DEFAULT_COLOUR
                   ) -> Iterator[tuple[object, Union[FileScore, Exception]]]:
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
                job = self.submit(path, seed=seed, clips=clips, rotate=rotate, colour=colour)
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
