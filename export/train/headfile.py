"""The head file: the tensors ``cover-train`` trained, and where they came from.

Format (a ``torch.save`` dict, read back with ``weights_only=True``, so loading one never runs
code from it):

* ``state_dict``: only the trained tensors, float32, named as in ``COVER.pth``
  (``smtc_gate_tech.*``, ``smtc_gate_aesc.*``, ``{semantic,technical,aesthetic}_head.*``; after
  ``--unfreeze`` every tensor of the model, the CLIP tower's as ``semantic_backbone.*``);
* ``validation_results``: ``[SROCC, PLCC, KROCC, RMSE]`` of the saved weights on their
  validation part;
* ``cover_engine_head``: provenance, plain JSON values: format version, the base model (its
  config and the two weight files' sha256), the label file (path, sha256, count), the split
  (seed, videos on each side), metrics before and after, the training settings, tool versions.

The first two keys are upstream's head checkpoint layout (``train_one_dataset.py``), so a head
file also loads into upstream's code (``--usehead``). Conversely upstream's head checkpoints
load here, with a notice that their base weights cannot be checked (they record none).

A head only means something on the backbones it was trained on: :func:`check_base` refuses a
head file whose recorded config or base weights differ from the model's.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from cover_engine.runtime.durable import write_atomic
from cover_engine.runtime.errors import WeightsError
from ..config import ModelConfig

__all__ = ["HEAD_FORMAT", "PROVENANCE_KEY", "HeadFile", "trained_names", "head_tensors",
           "save_head", "read_head", "check_base", "apply_head", "load_head", "manifest_entry"]

HEAD_FORMAT = 1
PROVENANCE_KEY = "cover_engine_head"

Log = Callable[[str], None]


@dataclass(frozen=True)
class HeadFile:
    """A head file as read: its tensors, its checksum and (None for upstream's) provenance."""

    path: Path
    sha256: str
    tensors: dict[str, torch.Tensor]
    provenance: Optional[dict]

    @property
    def base(self) -> Optional[dict]:
        return self.provenance.get("base") if self.provenance else None


def is_backbone(name: str) -> bool:
    """Upstream's rule: a top-level module whose name contains ``backbone`` is a backbone."""
    return "backbone" in name.split(".", 1)[0]


def trained_names(model: nn.Module, *, unfrozen: bool = False) -> list[str]:
    """State-dict names that training changes: gates and heads, or everything when unfrozen."""
    return [n for n in model.state_dict() if unfrozen or not is_backbone(n)]


def head_tensors(model: nn.Module, names) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the named tensors (floating ones as float32)."""
    state = model.state_dict()
    return {n: _stored(state[n]).clone() for n in names}


def _stored(t: torch.Tensor) -> torch.Tensor:
    """As saved: floating tensors float32 on the CPU, index buffers as they are."""
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).contiguous()


def save_head(path: Union[str, Path], tensors: Mapping[str, torch.Tensor], provenance: Mapping,
              validation: tuple[float, float, float, float]) -> str:
    """Write the head file atomically; returns its sha256."""
    obj = {"state_dict": {k: _stored(v) for k, v in tensors.items()},
           "validation_results": [_num(v) for v in validation],
           PROVENANCE_KEY: plain(dict(provenance, format=HEAD_FORMAT))}
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def plain(value: Any) -> Any:
    """Only JSON's types, exactly (what ``weights_only`` loading accepts): subclasses and numpy
    scalars become the plain Python type, paths strings, tuples lists; anything else raises."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if value is None:
        return None
    for kind in (bool, int, float, str):  # exact types: torch.__version__ is a str subclass
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise TypeError(f"provenance value of type {type(value).__name__} is not plain data")


def _num(v: float) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def read_head(path: Union[str, Path]) -> HeadFile:
    """Read and validate a head file (ours or upstream's); :class:`WeightsError` in one line."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: head file not found")
    data = path.read_bytes()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # anything torch cannot read safely: not a head file
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise WeightsError(f"{path}: not a readable head file ({type(exc).__name__}"
                           f"{': ' + first if first else ''})") from None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        raise WeightsError(f"{path}: not a head file (no 'state_dict' mapping)")
    tensors = {}
    for k, v in obj["state_dict"].items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: 'state_dict' holds a non-tensor entry {k!r}")
        tensors[k] = v
    if not tensors:
        raise WeightsError(f"{path}: the head file holds no tensors")
    provenance = obj.get(PROVENANCE_KEY)
    if provenance is not None:
        if not isinstance(provenance, Mapping):
            raise WeightsError(f"{path}: malformed provenance ({PROVENANCE_KEY!r} is not a mapping)")
        if provenance.get("format") != HEAD_FORMAT:
            raise WeightsError(f"{path}: head file format {provenance.get('format')!r}; this "
                               f"cover-engine reads format {HEAD_FORMAT}")
        provenance = dict(provenance)
    return HeadFile(path, hashlib.sha256(data).hexdigest(), tensors, provenance)


def check_base(head: HeadFile, cfg: ModelConfig, weights: Optional[Mapping],
               log: Log = print) -> None:
    """Refuse a head trained on another config or other base weights (one line).

    ``weights`` is :func:`~cover_engine.export.weights.weight_identity` of the model's files.
    Upstream's head files record no base: they are accepted with a notice.
    """
    base = head.base
    if base is None:
        log(f"cover-engine: {head.path} has no provenance (an upstream head checkpoint?); "
            "its base weights cannot be checked")
        return
    if base.get("config") != cfg.to_dict():
        raise WeightsError(f"{head.path}: head was trained for another model config "
                           f"({_config_diff(base.get('config'), cfg.to_dict())})")
    recorded = base.get("weights") or {}
    for key, label in (("cover", "COVER weights"), ("clip", "CLIP weights")):
        want = (recorded.get(key) or {}).get("sha256")
        have = ((weights or {}).get(key) or {}).get("sha256")
        if want != have:
            raise WeightsError(
                f"{head.path}: head was trained on other {label} "
                f"({(recorded.get(key) or {}).get('file')} sha256 {str(want)[:12]}…; "
                f"these are {((weights or {}).get(key) or {}).get('file')} "
                f"sha256 {str(have)[:12]}…)")


def _config_diff(a: Any, b: Any, prefix: str = "") -> str:
    """The first differing key of two config dicts, as ``key: head value != model value``."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.') or 'config'}: {a!r} != {b!r}"


def apply_head(model: nn.Module, head: HeadFile) -> nn.Module:
    """Copy the head's tensors into ``model`` after checking every name, shape and value kind:
    floating tensors must be finite, integer buffers (the Swin's position index, after
    ``--unfreeze``) must equal the model's own. Nothing is copied unless all pass."""
    state = model.state_dict()
    unknown = [k for k in head.tensors if k not in state]
    if unknown:
        raise WeightsError(f"{head.path}: tensor(s) the model does not have: "
                           f"{', '.join(sorted(unknown)[:6])}")
    for k, v in head.tensors.items():
        like = state[k]
        if tuple(v.shape) != tuple(like.shape):
            raise WeightsError(f"{head.path}: {k} has shape {tuple(v.shape)}, the model needs "
                               f"{tuple(like.shape)}")
        if like.is_floating_point():
            if not v.is_floating_point():
                raise WeightsError(f"{head.path}: {k} is {v.dtype}, not floating point")
            if not bool(torch.isfinite(v).all()):
                raise WeightsError(f"{head.path}: {k} holds non-finite values (NaN or Inf)")
        elif not torch.equal(v.to(like.dtype), like):  # index buffers follow from the config
            raise WeightsError(f"{head.path}: {k} differs from the model's own (derived from "
                               "the config); refused")
    with torch.no_grad():
        for k, v in head.tensors.items():
            state[k].copy_(v.to(state[k].dtype))
    return model


def load_head(model: nn.Module, path: Union[str, Path], cfg: ModelConfig,
              weights: Optional[Mapping], log: Log = print) -> HeadFile:
    """Read, check against the model's base and apply a head file; returns it."""
    head = read_head(path)
    check_base(head, cfg, weights, log)
    apply_head(model, head)
    return head


def manifest_entry(head: HeadFile) -> dict:
    """What an export's ``manifest.json`` says about the head baked into its graphs."""
    p = head.provenance or {}
    return {"file": head.path.name, "sha256": head.sha256,
            "trained": p.get("trained", "unknown"),
            "labels_sha256": (p.get("labels") or {}).get("sha256"),
            "validation": (p.get("metrics") or {}).get("after")}
