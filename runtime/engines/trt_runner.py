"""``--backend tensorrt``: runs the TensorRT engines of an engine folder (TensorRT 10 API).

Everything follows the manifest (:mod:`cover_engine.runtime.engines.manifest`): which engine serves which branch and mode,
and each engine's tensors by *name* -- inputs are bound with ``set_input_shape`` /
``set_tensor_address`` by the names the manifest lists, never by position. Before anything runs,
the TensorRT version and GPU recorded at build time are checked against this machine
(:func:`~.manifest.check_tensorrt`): TensorRT refuses, or silently misbehaves on, engines built
by another version or for another GPU, so the backend says to rebuild them instead.

Execution: the semantic engine first (its ``sem_feats`` feed the technical and aesthetic
engines), all three enqueued on one stream with ``execute_async_v3``. Device memory, streams and
events come from cuda-python (:mod:`~cover_engine.runtime.gpu.cuda`). For each (mode, batch size)
a slot keeps execution contexts of its own; after one warm-up run their three enqueues are
captured once into a CUDA graph and replayed from then on, so alternating batch sizes replay
their own graphs instead of recapturing (plain enqueues where capture is refused). Several
clips are in flight at once: each *slot* owns its execution contexts, buffers, stream and
pinned output memory, and :meth:`TrtBackend.submit` returns at once with a :class:`Pending`
result.

The GPU path (:mod:`cover_engine.runtime.gpu.pipeline`) writes views straight into a slot's
input buffers (:meth:`TrtBackend.acquire` / :meth:`TrtBackend.enqueue`, the
:class:`~cover_engine.runtime.engines.base.DeviceBackend` calls), so decoded frames never leave
the GPU.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.constants import BRANCHES, ViewSpec
from cover_engine.runtime.errors import EngineError, InputError
from cover_engine.runtime.engines.base import DeviceBackend, check_views
from cover_engine.runtime.engines.identity import check_engine_name
from cover_engine.runtime.engines.manifest import GraphEntry, Manifest, check_io, check_tensorrt, load_manifest

#: Slots (sets of contexts and buffers) by default: one running, one being filled.
DEFAULT_IN_FLIGHT = 2


def import_tensorrt(*, required: bool = True):
    """The ``tensorrt`` module. When it is not installed: :class:`EngineError` saying how to get
    it, or, with ``required=False`` (the exporter, which then stops after ONNX), None."""
    try:
        import tensorrt
    except ImportError:
        if not required:
            return None
        raise EngineError("TensorRT is not installed (pip install 'cover-engine[gpu-cu12]' or "
                          "'[gpu-cu13]', matching the driver's CUDA major); "
                          "use --backend onnxruntime") from None
    return tensorrt


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor as TensorRT reports it (``-1`` on dynamic axes)."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str


def engine_tensors(trt, engine) -> list[TensorInfo]:
    """Every I/O tensor of a deserialized engine, in the engine's order."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append(TensorInfo(
            name=name,
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
            dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name))
    return out


def check_engine_io(graph: GraphEntry, tensors: list[TensorInfo], where: str) -> None:
    """The engine's tensors are the manifest's (names, shapes, dtypes); order does not matter,
    since everything is bound by name."""
    order = {t.name: i for i, t in enumerate(graph.inputs + graph.outputs)}
    ranked = sorted(tensors, key=lambda t: order.get(t.name, len(order)))
    check_io(graph, [(t.name, t.shape, t.dtype) for t in ranked if t.is_input],
             [(t.name, t.shape, t.dtype) for t in ranked if not t.is_input], where)


def tensor_key(branch: str, name: str) -> str:
    """Buffer key of an engine output, as the manifest's ``source`` strings name it."""
    return f"{branch}:{name}"


def input_key(branch: str, source: str) -> str:
    """Buffer key an input reads: the branch's view, or another engine's output."""
    return f"view:{branch}" if source == "view" else source


def bind(context, graph: GraphEntry, batch: int, addresses: Mapping[str, int]) -> None:
    """Give one execution context its input shapes and every tensor's address, by name."""
    for t in graph.inputs:
        if not context.set_input_shape(t.name, t.with_batch(batch)):
            raise EngineError(f"{graph.key} engine rejects input {t.name} of shape "
                              f"{list(t.with_batch(batch))} (outside its optimisation profile?)")
    for t in graph.inputs:
        _set_address(context, graph, t.name, addresses[input_key(graph.branch, t.source or "view")])
    for t in graph.outputs:
        _set_address(context, graph, t.name, addresses[tensor_key(graph.branch, t.name)])


def _set_address(context, graph: GraphEntry, name: str, address: int) -> None:
    if not context.set_tensor_address(name, int(address)):
        raise EngineError(f"{graph.key} engine has no tensor {name!r} to bind")


def buffer_layout(graphs: Mapping[str, GraphEntry],
                  batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every device buffer one run needs: key -> (shape, dtype). Views are keyed ``view:BRANCH``,
    engine outputs ``BRANCH:NAME`` (so ``semantic:sem_feats`` is what the others read)."""
    layout: dict[str, tuple[tuple[int, ...], str]] = {}
    for branch in BRANCHES:
        g = graphs[branch]
        for t in g.inputs:
            if (t.source or "view") == "view":
                layout[input_key(branch, "view")] = (t.with_batch(batch), t.dtype)
        for t in g.outputs:
            layout[tensor_key(branch, t.name)] = (t.with_batch(batch), t.dtype)
    for branch in BRANCHES:
        for t in graphs[branch].inputs:
            key = input_key(branch, t.source or "view")
            if key not in layout:
                raise EngineError(f"{graphs[branch].key} input {t.name} reads {t.source!r}, "
                                  "which no engine produces")
    return layout


def open_folder(engine_dir: Union[str, Path], trt, *, gpu_name: str,
                compute_capability: str) -> Manifest:
    """The folder's checked manifest, refused (with how to rebuild) when its engines were built
    by another TensorRT version or for another GPU than ``gpu_name`` / ``compute_capability``."""
    manifest = load_manifest(engine_dir)
    check_tensorrt(manifest, version=trt.__version__, gpu=gpu_name,
                   compute_capability=compute_capability, folder=engine_dir)
    return manifest


def load_engines(trt, runtime, folder: Path, manifest: Manifest, mode: str) -> dict[str, object]:
    """Deserialize one mode's three engines; check each is built for its manifest entry's mode and
    branch (its name) and that its tensors are the manifest's."""
    engines = {}
    for branch in BRANCHES:
        graph = manifest.graph(mode, branch)
        if graph.engine is None:
            raise EngineError(f"{folder}: the {graph.key} graph has no TensorRT engine; rebuild "
                              "with `cover-export --engine`")
        path = folder / graph.engine.file.path
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine "
                              "(built by another TensorRT version or for another GPU?); rebuild it")
        check_engine_name(graph, getattr(engine, "name", None), str(path))
        check_engine_io(graph, engine_tensors(trt, engine), str(path))
        engines[branch] = engine
    return engines


@dataclass
class DeviceTensor:
    """A device buffer seen as a tensor of ``shape`` / ``dtype`` (for kernels writing views)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


#: Execution units (contexts + graph) a slot keeps, one per (mode, batch) in use; the least
#: recently used is dropped beyond this (each context holds its own activation memory).
MAX_UNITS_PER_SLOT = 4


class _Unit:
    """The three execution contexts bound for one (mode, batch) in one slot, and their CUDA
    graph. A captured graph replays the shapes and addresses it was captured with, and TensorRT
    may keep shape-dependent state inside a context: so each (mode, batch) has contexts of its
    own, and switching batch size never invalidates another batch size's graph."""

    def __init__(self, contexts: dict[str, object]):
        self.contexts = contexts
        self.addresses: Optional[dict[str, int]] = None   # what the contexts are bound to
        self.graph = None                                  # cudaGraphExec_t
        self.runs = 0                                      # plain runs since (re)binding

    def drop_graph(self, runtime) -> None:
        if self.graph is not None:
            runtime.cudaGraphExecDestroy(self.graph)
            self.graph = None
        self.runs = 0


class _Slot:
    """One in-flight unit of work: device buffers, stream, pinned outputs, and an execution
    :class:`_Unit` per (mode, batch) it has run."""

    def __init__(self, owner: "TrtBackend"):
        self.owner = owner
        self.stream = gpu.Stream()
        self.done = gpu.Event()
        self.units: "collections.OrderedDict[tuple[str, int], _Unit]" = collections.OrderedDict()
        self.buffers: dict[str, gpu.DeviceBuffer] = {}
        self.host_out: dict[str, gpu.PinnedArray] = {}
        self.staging: dict[str, gpu.PinnedArray] = {}
        self.pending: Optional["Pending"] = None
        self.held: list = []        # resources the queued work reads (decoded frames, tables)
        self.mode = ""
        self.batch = 0
        self.captures = 0           # graphs captured (tests: a batch switch must not recapture)

    def hold(self, resource) -> None:
        """Keep ``resource`` (anything with ``close()``) alive until this slot's run is done."""
        self.held.append(resource)

    def _release_held(self) -> None:
        self.stream.synchronize()
        for resource in self.held:
            resource.close()
        self.held.clear()

    def _unit(self, mode: str, batch: int) -> _Unit:
        key = (mode, batch)
        if key in self.units:
            self.units.move_to_end(key)
            return self.units[key]
        while len(self.units) >= MAX_UNITS_PER_SLOT:
            _, old = self.units.popitem(last=False)
            old.drop_graph(gpu.cuda_api()[1])
        engines = self.owner._engines_for(mode)
        contexts = {b: engines[b].create_execution_context() for b in BRANCHES}
        if any(c is None for c in contexts.values()):
            raise EngineError("TensorRT could not create an execution context "
                              "(out of GPU memory?)")
        self.units[key] = _Unit(contexts)
        return self.units[key]

    def contexts_for(self, mode: str) -> dict[str, object]:
        """The execution contexts bound for ``mode`` at this slot's batch size (after
        :meth:`prepare`), e.g. to enqueue the engines one by one for per-engine timing."""
        return self._unit(mode, self.batch).contexts

    def prepare(self, mode: str, batch: int) -> None:
        """Buffers large enough for ``batch`` items of ``mode``, its unit bound to them."""
        if self.pending is not None:
            self.pending._collect()
        self._release_held()
        graphs = self.owner._graphs(mode)
        need = {k: int(np.prod(shape)) * np.dtype(dtype).itemsize
                for k, (shape, dtype) in buffer_layout(graphs, batch).items()}
        if any(k not in self.buffers or self.buffers[k].nbytes < n for k, n in need.items()):
            sizes = {k: max(n, self.buffers[k].nbytes if k in self.buffers else 0)
                     for k, n in need.items()}
            for k, buf in self.buffers.items():
                sizes.setdefault(k, buf.nbytes)
            runtime = gpu.cuda_api()[1]
            for unit in self.units.values():  # new addresses: every graph is stale
                unit.drop_graph(runtime)
                unit.addresses = None
            for buf in self.buffers.values():
                buf.close()
            self.buffers = {k: gpu.DeviceBuffer(n) for k, n in sizes.items()}
        unit = self._unit(mode, batch)
        addresses = {k: b.ptr for k, b in self.buffers.items()}
        if unit.addresses != addresses:
            unit.drop_graph(gpu.cuda_api()[1])
            for branch in BRANCHES:
                bind(unit.contexts[branch], graphs[branch], batch, addresses)
            unit.addresses = addresses
        self.mode, self.batch = mode, batch

    def view(self, branch: str) -> DeviceTensor:
        shape, dtype = buffer_layout(self.owner._graphs(self.mode), self.batch)[f"view:{branch}"]
        return DeviceTensor(self.buffers[f"view:{branch}"].ptr, shape, dtype)

    def upload(self, views: Mapping[str, np.ndarray]) -> None:
        """Queue host views into the view buffers (through pinned staging memory)."""
        layout = buffer_layout(self.owner._graphs(self.mode), self.batch)
        for branch in BRANCHES:
            key = f"view:{branch}"
            shape, dtype = layout[key]
            if key not in self.staging or self.staging[key].array.shape != shape:
                if key in self.staging:
                    self.staging[key].close()
                self.staging[key] = gpu.PinnedArray(shape, dtype)
            host = self.staging[key].array
            host[...] = views[branch]
            self.buffers[key].upload(host, self.stream)

    def execute(self) -> None:
        """Enqueue the three engines (as a CUDA graph when possible) and the score-map copies."""
        unit = self._unit(self.mode, self.batch)
        if unit.graph is not None:
            gpu.check(gpu.cuda_api()[1].cudaGraphLaunch(unit.graph, self.stream.handle),
                      "cudaGraphLaunch")
        else:
            self._enqueue(unit.contexts)
            unit.runs += 1
            if self.owner.cuda_graphs and unit.runs >= 2:  # shapes warmed up: capture now
                self._capture(unit)
        layout = buffer_layout(self.owner._graphs(self.mode), self.batch)
        for branch in BRANCHES:
            k = tensor_key(branch, "score_map")
            shape, dtype = layout[k]
            if k not in self.host_out or self.host_out[k].array.shape != shape:
                if k in self.host_out:
                    self.host_out[k].close()
                self.host_out[k] = gpu.PinnedArray(shape, dtype)
            self.buffers[k].download(self.host_out[k].array, self.stream)
        self.done.record(self.stream)

    def _enqueue(self, contexts) -> None:
        for branch in BRANCHES:
            if not contexts[branch].execute_async_v3(self.stream.handle):
                raise EngineError(f"TensorRT failed to enqueue the {self.mode}/{branch} engine")

    def _capture(self, unit: _Unit) -> None:
        """Record the three enqueues into a CUDA graph for later runs of this (mode, batch).
        The work just enqueued already computes this run; capture only records."""
        _, runtime, _ = gpu.cuda_api()
        self.stream.synchronize()
        mode = runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        gpu.check(runtime.cudaStreamBeginCapture(self.stream.handle, mode),
                  "cudaStreamBeginCapture")
        try:
            ok = all(unit.contexts[b].execute_async_v3(self.stream.handle) for b in BRANCHES)
        finally:  # always leave capture mode, or the stream stays unusable
            status, graph = runtime.cudaStreamEndCapture(self.stream.handle)
        if not ok or int(status) != 0:
            self.owner._graphs_refused(f"{self.mode} batch {self.batch}")
            return
        graph_exec = gpu.check(runtime.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        gpu.check(runtime.cudaGraphDestroy(graph), "cudaGraphDestroy")
        unit.graph = graph_exec
        self.captures += 1

    def results(self) -> dict[str, np.ndarray]:
        self.done.synchronize()
        return {b: np.array(self.host_out[tensor_key(b, "score_map")].array, dtype=np.float32)
                for b in BRANCHES}

    def close(self) -> None:
        self._release_held()
        runtime = gpu.cuda_api()[1]
        for unit in self.units.values():
            unit.drop_graph(runtime)
        self.units.clear()
        for buf in self.buffers.values():
            buf.close()
        for arr in list(self.host_out.values()) + list(self.staging.values()):
            arr.close()
        self.done.close()
        self.stream.close()


class Pending:
    """Score maps that are being computed; :meth:`result` waits for them."""

    def __init__(self, slot: _Slot):
        self._slot: Optional[_Slot] = slot
        self._maps: Optional[dict[str, np.ndarray]] = None
        slot.pending = self

    def done(self) -> bool:
        return self._maps is not None or self._slot.done.query()

    def _collect(self) -> None:
        if self._maps is None:
            self._maps = self._slot.results()
            self._slot.pending = None
            self._slot = None

    def result(self) -> dict[str, np.ndarray]:
        """``{branch: score map (B, 1, T', h, w) float32}``."""
        self._collect()
        return self._maps


class TrtBackend(DeviceBackend):
    """The three TensorRT engines of a folder as one backend (see the module docstring)."""

    def __init__(self, engine_dir: Union[str, Path], *, device: str = "cuda",
                 in_flight: int = DEFAULT_IN_FLIGHT, cuda_graphs: bool = True,
                 log: Callable[[str], None] = print):
        trt = import_tensorrt()
        if not device.startswith("cuda"):
            raise EngineError(f"the TensorRT backend runs on a CUDA device, not {device!r}")
        self.device_index = int(device.partition(":")[2] or 0)
        gpu.use_device(self.device_index)
        self.engine_dir = Path(engine_dir)
        major, minor = gpu.compute_capability(self.device_index)
        self.manifest = open_folder(self.engine_dir, trt,
                                    gpu_name=gpu.device_name(self.device_index),
                                    compute_capability=f"{major}.{minor}")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines: dict[str, dict[str, object]] = {}
        self.cuda_graphs = cuda_graphs
        self._log = log
        self.name = "tensorrt" if self.manifest.precision == "fp32" else \
            f"tensorrt-{self.manifest.precision}"
        self.specs: dict[str, ViewSpec] = self.manifest.specs
        self.max_batch = int(self.manifest.batch["max"])
        self._engines_for(self.manifest.modes[0])       # load and check the video engines now
        self._slots = [_Slot(self) for _ in range(max(1, in_flight))]
        self._next = 0

    # ------------------------------------------------------------------ manifest and engines
    def _engines_for(self, mode: str) -> dict[str, object]:
        if mode not in self._engines:
            self._engines[mode] = load_engines(self._trt, self._runtime, self.engine_dir,
                                               self.manifest, mode)
        return self._engines[mode]

    def _graphs(self, mode: str) -> dict[str, GraphEntry]:
        return {b: self.manifest.graph(mode, b) for b in BRANCHES}

    def _graphs_refused(self, what: str) -> None:
        if self.cuda_graphs:
            self._log(f"cover-run: CUDA graph capture refused for {what}; "
                      "running TensorRT without graphs")
        self.cuda_graphs = False

    # ------------------------------------------------------------------ running
    def acquire(self, batch: int, mode: str = "video") -> _Slot:
        """The next free slot, bound for ``batch`` items of ``mode``. Its earlier result (if
        any) is fetched first, so a :class:`Pending` stays valid after its slot is reused."""
        if not 1 <= batch <= self.max_batch:
            raise InputError(f"batch of {batch} is outside the engines' range 1..{self.max_batch}")
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        slot.prepare(mode, batch)
        return slot

    def enqueue(self, slot: _Slot) -> Pending:
        """Run the engines on views already in ``slot``'s buffers (written on ``slot.stream``)."""
        slot.execute()
        return Pending(slot)

    def submit(self, views: Mapping[str, np.ndarray]) -> Pending:
        """Start scoring host views ``{branch: (B, 3, T, H, W)}``; returns at once."""
        check_views(views)
        batch = int(np.shape(views[BRANCHES[0]])[0])
        slot = self.acquire(batch, self.mode_for(views))
        slot.upload(views)
        return self.enqueue(slot)

    def run(self, views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score maps ``(B, 1, T', h, w)`` float32 for views ``(B, 3, T, H, W)``."""
        return self.submit(views).result()

    def run_many(self, batches: Iterable[Mapping[str, np.ndarray]]
                 ) -> Iterator[dict[str, np.ndarray]]:
        """Score a stream of view batches with up to ``in_flight`` of them on the GPU at once;
        results come back in order."""
        queue: collections.deque[Pending] = collections.deque()
        for views in batches:
            if len(queue) == len(self._slots):
                yield queue.popleft().result()
            queue.append(self.submit(views))
        while queue:
            yield queue.popleft().result()

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots = []
