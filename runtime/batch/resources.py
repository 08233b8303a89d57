"""How many workers a cluster holds: CPUs, GPUs and -- the one that bites -- host memory.

A worker's peak host memory is mostly the model: measured at official size (BENCHMARKS.md)
for each backend, and estimated for other configs from the size of their exported graphs.
``cover-batch`` refuses to start more workers than the nodes' memory holds (saying which node
and resource limits it) instead of letting the kernel's OOM killer pick victims mid-run, and
asks Ray to reserve that memory per worker so Ray itself never packs more onto a node.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cover_engine.runtime.constants import WORKER_MEMORY
from cover_engine.runtime.errors import CoverError

__all__ = ["Node", "WorkerNeeds", "worker_memory", "fit_workers", "plan_workers",
           "available_memory", "format_bytes"]

GB = 1024 ** 3


@dataclass(frozen=True)
class Node:
    """One Ray node's resources for workers (memory in bytes)."""

    name: str
    cpus: float
    gpus: float
    memory: float


@dataclass(frozen=True)
class WorkerNeeds:
    """What one worker reserves."""

    cpus: float
    gpus: float
    memory: float


def format_bytes(n: float) -> str:
    return f"{n / GB:.1f} GB"


def worker_memory(backend: str, *, official: bool, graph_bytes: Optional[int] = None,
                  device: str = "cpu") -> tuple[float, str]:
    """Estimated peak host memory of one worker, and where the figure comes from.

    Official size: the measured peak of the backend (``WORKER_MEMORY``). Other configs: a fixed
    process cost plus a multiple of the exported graphs' size (weights dominate what a small
    model holds). On a GPU, ONNX Runtime and TensorRT keep weights and activations on the device.
    """
    kind = "gpu" if device.startswith("cuda") else "cpu"
    key = "torch" if backend == "torch" else ("tensorrt" if backend == "tensorrt" else "onnxruntime")
    base, factor = WORKER_MEMORY["base"], WORKER_MEMORY["per_graph_byte"]
    size = graph_bytes or 0
    estimate = base + factor * size
    measured = WORKER_MEMORY["official"].get(kind, {}).get(key) if official else None
    if measured is not None:
        return measured, f"measured peak of one {key} worker at official size ({kind})"
    return estimate, (f"estimated as {format_bytes(base)} + {factor:g} x "
                      f"{format_bytes(size)} of model files")


def fit_workers(nodes: Sequence[Node], needs: WorkerNeeds) -> list[tuple[Node, int, str]]:
    """Per node: how many workers fit, and the resource that limits it."""
    out = []
    for node in nodes:
        limits = {"memory": math.floor(node.memory / needs.memory) if needs.memory else math.inf,
                  "CPUs": math.floor(node.cpus / needs.cpus + 1e-9) if needs.cpus else math.inf}
        if needs.gpus:
            limits["GPUs"] = math.floor(node.gpus / needs.gpus + 1e-9)
        limit = min(limits, key=lambda k: limits[k])
        count = limits[limit]
        out.append((node, int(count) if count != math.inf else 0, limit))
    return out


def plan_workers(nodes: Sequence[Node], needs: WorkerNeeds, requested: Optional[int],
                 memory_source: str) -> int:
    """The number of workers to start: ``requested`` if it fits, else as many as fit (or refuse)."""
    fits = fit_workers(nodes, needs)
    total = sum(n for _, n, _ in fits)
    per_node = "; ".join(
        f"{node.name}: {n} ({node.cpus:g} CPUs, {node.gpus:g} GPUs, "
        f"{format_bytes(node.memory)} free, limited by {limit})" for node, n, limit in fits)
    wants = (f"each worker needs {needs.cpus:g} CPU, {needs.gpus:g} GPU and "
             f"{format_bytes(needs.memory)} of host memory ({memory_source})")
    if total == 0:
        raise CoverError(f"cannot start even one worker: {wants}; the cluster has {per_node}. "
                         "Free memory, use a smaller --worker-memory only if you know better, "
                         "or add nodes")
    if requested is not None and requested > total:
        raise CoverError(f"refusing to start {requested} workers: {wants}, so at most {total} "
                         f"fit ({per_node}); use --workers {total} or fewer")
    return requested if requested is not None else total


def available_memory() -> Optional[float]:
    """This machine's ``MemAvailable`` in bytes (Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None
