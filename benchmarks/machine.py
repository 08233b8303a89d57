"""Facts about the machine a benchmark ran on, for the report: hardware, load, versions."""
from __future__ import annotations

import os
import platform
from typing import Any, Optional

import numpy as np

from cover_engine import __version__
from cover_engine.runtime.errors import InputError

__all__ = ["machine_info", "versions", "load_average", "resolve_device"]


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _total_memory(),
        # Other work on the machine skews every figure; the load says how busy it was before
        # the benchmark started (run_bench adds the figure after it).
        "load_average_1m_before": load_average(),
        "gpu": None,
    }
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                       "memory_bytes": int(props.total_memory), "cuda": torch.version.cuda}
    return info


def versions() -> dict[str, Optional[str]]:
    import av

    out: dict[str, Optional[str]] = {"cover-engine": __version__,
                                     "python": platform.python_version(),
                                     "numpy": np.__version__, "av": av.__version__}
    libavcodec = av.library_versions.get("libavcodec")
    out["libavcodec"] = ".".join(map(str, libavcodec)) if libavcodec else None
    for module in ("torch", "onnxruntime", "onnx", "tensorrt"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = None
    return out


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a CUDA device asked for must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but torch sees no CUDA GPU here")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device!r}: use auto, cpu or cuda[:N]")
    return device
