"""Shared fixtures: where the reference vectors live, GPU detection, scratch media."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def vectors_root() -> Path:
    """``$COVER_VECTORS``, or ``../shared/cover-vectors`` beside the repository."""
    env = os.environ.get("COVER_VECTORS")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "cover-vectors")


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    root = vectors_root()
    if not (root / "model" / "config.json").is_file():
        pytest.fail(f"reference vectors not found at {root} (set COVER_VECTORS)")
    return root


def _has_cuda() -> bool:
    try:
        from cuda.bindings import driver  # type: ignore

        err, = driver.cuInit(0)[:1]
        if int(err) != 0:
            return False
        err, count = driver.cuDeviceGetCount()
        return int(err) == 0 and count > 0
    except Exception:
        pass
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_CUDA = _has_cuda()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no NVIDIA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
