"""Where the CUDA sources live (package data), and nothing else.

The exporter copies the view kernels into every engine folder for a C++ host, and the GPU path
compiles them with NVRTC; both find them here, so neither needs the other (nor cuda-python).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["KERNEL_DIR", "VIEW_KERNELS", "kernel_path", "kernel_source"]

#: Folder of the ``.cu`` sources.
KERNEL_DIR = Path(__file__).resolve().parent
#: The view kernels: NV12 / P016 frames -> normalised view tensors (``cover_resize_view``,
#: ``cover_fragments_view``).
VIEW_KERNELS = "views.cu"


def kernel_path(name: str = VIEW_KERNELS) -> Path:
    """Path of the kernel source ``name``."""
    return KERNEL_DIR / name


def kernel_source(name: str = VIEW_KERNELS) -> str:
    """Text of the kernel source ``name``."""
    return kernel_path(name).read_text()
