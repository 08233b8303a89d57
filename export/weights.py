"""Loading COVER.pth and OpenAI's CLIP archive into :class:`~.cover.COVER`, strictly.

Upstream loads COVER.pth with ``strict=False`` (which silently leaves anything missing at its
random initialisation) and builds the CLIP tower from OpenAI's archive. Here every tensor the
model needs must be present with the right shape, or :class:`WeightsError` names it and its file.
Tensors the model does not use (``semantic_backbone.prompt_learner.*``, the CLIP text tower,
``visual.positional_embedding``, archive metadata) are ignored. Every tensor it uses must be
finite floating point (integer buffers: exactly what the architecture derives).

Weight files are untrusted: nothing in them is executed. COVER.pth goes through
``torch.load(weights_only=True)``; OpenAI's TorchScript archive is read as data by
:mod:`.script_archive`, never by ``torch.jit.load``.

Two namespaces: COVER.pth keys are the model's own parameter names; the CLIP tower's parameters,
``semantic_backbone.X`` in the model, are ``visual.X`` in OpenAI's archive.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from cover_engine.runtime.errors import WeightsError
from .config import ModelConfig
from .cover import COVER
from .script_archive import ArchiveError, is_torchscript_archive, read_script_tensors
from .swin3d import relative_position_index

__all__ = ["CLIP_PREFIX", "SEMANTIC_PREFIX", "build_meta", "expected_keys", "file_key",
           "load_clip_archive", "load_cover_checkpoint", "load_model"]

PathLike = Union[str, os.PathLike]

#: Model prefix of the CLIP image tower, and the prefix of the same tensors in OpenAI's archive.
SEMANTIC_PREFIX = "semantic_backbone."
CLIP_PREFIX = "visual."

#: How many offending tensor names an error message lists before summarising.
_MAX_NAMED = 8


def file_key(model_key: str) -> tuple[str, str]:
    """``("cover" | "clip", key in that file)`` for one of the model's state-dict keys."""
    if model_key.startswith(SEMANTIC_PREFIX):
        return "clip", CLIP_PREFIX + model_key[len(SEMANTIC_PREFIX):]
    return "cover", model_key


def build_meta(cfg: ModelConfig) -> COVER:
    """The model with shapes only (``meta`` device): no memory for weights, no initialisation."""
    with torch.device("meta"):
        return COVER(cfg)


def expected_keys(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, by its name in the weight files, with its shape.

    Names starting with ``visual.`` come from the CLIP archive, all others from COVER.pth.
    Computed on the ``meta`` device, so the official ViT-L model costs no memory.
    """
    return {file_key(k)[1]: tuple(v.shape) for k, v in build_meta(cfg).state_dict().items()}


def load_cover_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """COVER.pth's tensors: ``torch.save({"state_dict": ...})`` or a bare state dict."""
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return _tensor_dict(obj, path)


def load_clip_archive(path: PathLike) -> dict[str, torch.Tensor]:
    """OpenAI's CLIP weights: the TorchScript archive as published (fp16), or a plain state dict
    saved with ``torch.save``.

    The archive is never given to ``torch.jit.load`` (which runs the archive's TorchScript):
    :mod:`.script_archive` reads its tensors as data, and refuses anything else in it.
    """
    _check_file(path)
    if not is_torchscript_archive(path):
        obj = _torch_load(path)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        return _tensor_dict(obj, path)
    try:
        return read_script_tensors(path)
    except ArchiveError as exc:
        raise WeightsError(f"{path}: not a readable CLIP archive ({exc})") from None


def load_model(cfg: ModelConfig, cover_path: PathLike, clip_path: PathLike) -> COVER:
    """The float32, eval-mode model with weights from COVER.pth and the CLIP archive."""
    sources = {"cover": (Path(cover_path), load_cover_checkpoint(cover_path)),
               "clip": (Path(clip_path), load_clip_archive(clip_path))}
    model = build_meta(cfg)
    state: dict[str, torch.Tensor] = {}
    problems: dict[str, tuple[list[str], list[str]]] = {k: ([], []) for k in sources}
    for name, like in model.state_dict().items():
        kind, key = file_key(name)
        tensors = sources[kind][1]
        missing, misshaped = problems[kind]
        if key not in tensors:
            missing.append(key)
        elif tensors[key].shape != like.shape:
            misshaped.append(f"{key} {tuple(tensors[key].shape)} (model needs {tuple(like.shape)})")
        else:
            state[name] = _checked(sources[kind][0], key, tensors[key], like, model, name)
    for kind, (missing, misshaped) in problems.items():
        path = sources[kind][0]
        if missing:
            raise WeightsError(f"{path}: missing tensor(s) {_names(missing)}")
        if misshaped:
            raise WeightsError(f"{path}: wrong shape for {_names(misshaped)}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def _checked(path: Path, key: str, t: torch.Tensor, like: torch.Tensor, model: COVER,
             name: str) -> torch.Tensor:
    """The file's tensor as the model takes it, or :class:`WeightsError` naming it.

    A floating parameter must come as finite floating-point numbers (an integer or NaN/Inf
    tensor would make every score meaningless, or not finite). Integer buffers are derived from
    the architecture (the Swin's relative position index): the file's copy must equal it, so a
    tampered index can neither crash scoring nor silently permute the bias tables.
    """
    if like.is_floating_point():
        if not t.is_floating_point():
            raise WeightsError(f"{path}: tensor {key} is {_dtype(t)}, not floating point")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsError(f"{path}: tensor {key} holds {bad} non-finite value(s) (NaN or Inf)")
        return t.float()
    owner, _, buffer = name.rpartition(".")
    if buffer == "relative_position_index":
        window = model.get_submodule(owner).window_size
        want = torch.from_numpy(relative_position_index(window))
        if t.dtype != want.dtype or not torch.equal(t, want):
            raise WeightsError(f"{path}: tensor {key} is not the relative position index of a "
                               f"{'x'.join(map(str, window))} window")
        return want
    if t.dtype != like.dtype:
        raise WeightsError(f"{path}: tensor {key} is {_dtype(t)}, the model needs {_dtype(like)}")
    return t


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def weight_identity(cfg: ModelConfig, cover_path: Optional[PathLike],
                    clip_path: Optional[PathLike]) -> dict:
    """``{"cover"|"clip": {"file", "sha256"}}`` of the weights a model was loaded from (what
    manifests and head files record, and what a head file's base is checked against).

    The official config's files were verified against the published checksums when they were
    resolved, so those are recorded without hashing 1.1 GB again; other files are hashed.
    """
    from cover_engine.runtime.constants import CLIP_WEIGHTS, COVER_WEIGHTS
    from cover_engine.runtime.hashing import sha256_file

    official = cfg == ModelConfig.official()
    info = {}
    for key, wf, path in (("cover", COVER_WEIGHTS, cover_path), ("clip", CLIP_WEIGHTS, clip_path)):
        if path is None and not official:
            raise WeightsError(f"the weights of a custom model must be named ({wf.name})")
        info[key] = {"file": Path(path).name if path else wf.name,
                     "sha256": wf.sha256 if official else sha256_file(path)}
    return info


def _check_file(path: PathLike) -> None:
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"{path}: weight file not found")
    if not p.is_file():
        raise WeightsError(f"{path}: not a regular file")


def _torch_load(path: PathLike):
    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = type(exc).__name__ + (f": {lines[0][:120]}" if lines else "")
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({reason})") from exc


def _tensor_dict(obj, path: PathLike) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: not a state dict (found {type(obj).__name__})")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown if len(names) <= _MAX_NAMED else f"{shown} and {len(names) - _MAX_NAMED} more"
