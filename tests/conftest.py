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


@pytest.fixture(scope="session")
def gpu_vectors_dir() -> Path:
    """The vectors for GPU tests, which also run as a user's self-test where the vector folder
    is not at hand: skipped (not failed) without it."""
    root = vectors_root()
    if not (root / "model" / "config.json").is_file():
        pytest.skip(f"reference vectors not found at {root} (set COVER_VECTORS)")
    return root


@pytest.fixture(scope="session")
def nvdec_required():
    """For GPU tests of NVDEC: skipped only where PyNvVideoCodec is not installed. Where it is
    installed, NVDEC must work: a module that cannot start (no driver video library, e.g. a
    container without the ``video`` capability) fails the test instead of letting it pass
    through the CPU fallback."""
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        pytest.skip("PyNvVideoCodec is not installed")
    except Exception as exc:
        pytest.fail(f"PyNvVideoCodec is installed but cannot start: {exc}")


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
        # the marker itself: ``"gpu" in item.keywords`` also matches any folder named gpu
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def blur_set(tmp_path_factory):
    """cover-train's labelled set (``cover_engine.bench.labelled``): 40 videos whose MOS is set by
    blur (``labels.txt``), 12 more never trained on (``heldout.txt``), and one feature cache
    folder, shared by the training tests so that each clip goes through the backbones once."""
    from types import SimpleNamespace

    from cover_engine.bench.labelled import write_blur_set

    root = tmp_path_factory.mktemp("blur")
    labels = write_blur_set(root, 40, seed=1)
    held = write_blur_set(root, 12, seed=2, start=40, labels="heldout.txt")
    return SimpleNamespace(root=root, labels=labels, held=held,
                           cache=tmp_path_factory.mktemp("features"))
