"""Architecture sizes of the COVER model, in the schema of ``cover-vectors/model/config.json``.

Every size the model code needs comes from here, so the same code builds the official model, the
small reference-vector model and any test configuration. The dataclass defaults are the official
sizes (docs/cover-behaviour.md section 1): ``ModelConfig()`` is ``ModelConfig.official()``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.errors import InputError
from cover_engine.runtime.engines.manifest import jsonable
from cover_engine.runtime.safe_json import JSONRefused, loads_strict

Shape = tuple[int, ...]


def _official_inputs() -> dict[str, Shape]:
    return {
        "semantic": (1, 3, 20, 512, 512),
        "technical": (1, 3, 40, 224, 224),
        "aesthetic": (1, 3, 40, 224, 224),
    }


@dataclass(frozen=True)
class SwinConfig:
    """Technical branch: Video Swin-T with FAST-VQA's fragment position bias ("GRPB")."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, int, int] = (8, 7, 7)
    patch_size: tuple[int, int, int] = (2, 4, 4)
    frag_biases: tuple[bool, ...] = (True, True, True, False)
    kind: str = "swin3d_grpb"

    def __post_init__(self) -> None:
        _check(self.kind == "swin3d_grpb", f"technical.kind {self.kind!r} is not 'swin3d_grpb'")
        n = len(self.depths)
        _check(n > 0 and len(self.num_heads) == n and len(self.frag_biases) == n,
               "technical.depths, num_heads and frag_biases need one entry per stage")
        _check(len(self.window_size) == 3 and len(self.patch_size) == 3,
               "technical.window_size and patch_size need 3 entries (T, H, W)")
        _check(min(self.window_size + self.patch_size + self.depths) > 0 and self.embed_dim > 0,
               "technical sizes must be positive")
        for i, heads in enumerate(self.num_heads):
            _check(heads > 0 and self.stage_dim(i) % heads == 0,
                   f"technical stage {i}: {self.stage_dim(i)} channels do not split into {heads} heads")

    def stage_dim(self, i: int) -> int:
        """Channels of stage ``i`` (patch merging doubles them)."""
        return self.embed_dim * 2 ** i

    @property
    def out_channels(self) -> int:
        return self.stage_dim(len(self.depths) - 1)


@dataclass(frozen=True)
class ConvNeXtConfig:
    """Aesthetic branch: ConvNeXt-T inflated to 3D."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    inflate_strategy: str = "131"
    kind: str = "convnext3d"

    def __post_init__(self) -> None:
        _check(self.kind == "convnext3d", f"aesthetic.kind {self.kind!r} is not 'convnext3d'")
        _check(len(self.depths) > 0 and len(self.depths) == len(self.dims),
               "aesthetic.depths and dims need one entry per stage")
        _check(min(self.depths + self.dims) > 0, "aesthetic sizes must be positive")
        _check(len(self.inflate_strategy) > 0
               and all(c.isdigit() and int(c) % 2 == 1 for c in self.inflate_strategy),
               f"aesthetic.inflate_strategy {self.inflate_strategy!r} must be odd digits "
               "(temporal kernel sizes)")

    @property
    def out_channels(self) -> int:
        return self.dims[-1]


@dataclass(frozen=True)
class ClipVitConfig:
    """Semantic branch: OpenAI CLIP ViT image tower (used without its positional embedding)."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    patch_size: int = 14
    output_dim: int = 768
    kind: str = "clip_vit"

    def __post_init__(self) -> None:
        _check(self.kind == "clip_vit", f"semantic.kind {self.kind!r} is not 'clip_vit'")
        _check(min(self.width, self.layers, self.heads, self.patch_size, self.output_dim) > 0,
               "semantic sizes must be positive")
        _check(self.width % self.heads == 0,
               f"semantic width {self.width} does not split into {self.heads} heads")

    @property
    def out_channels(self) -> int:
        return self.output_dim


@dataclass(frozen=True)
class ModelConfig:
    """The whole model: three backbones, the two cross-gates, three heads, and input shapes.

    ``inputs`` maps each branch to the ``(B, 3, T, H, W)`` view shape the model is built for; the
    model itself accepts other batch sizes, frame counts (T=1 for images) and sizes, but exported
    engines and the semantic score-map grid are derived from these shapes.
    """

    technical: SwinConfig = field(default_factory=SwinConfig)
    aesthetic: ConvNeXtConfig = field(default_factory=ConvNeXtConfig)
    semantic: ClipVitConfig = field(default_factory=ClipVitConfig)
    gate_channels: int = 768
    head_hidden: int = 64
    inputs: dict[str, Shape] = field(default_factory=_official_inputs)
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        _check(self.gate_channels > 0 and self.head_hidden > 0,
               "gate_channels and head_hidden must be positive")
        _check(set(self.inputs) == set(BRANCHES),
               f"inputs must give a shape for each of {', '.join(BRANCHES)}")
        for name, shape in self.inputs.items():
            _check(len(shape) == 5 and shape[1] == 3 and min(shape) > 0,
                   f"inputs.{name} must be a positive (B, 3, T, H, W) shape, got {list(shape)}")

    @classmethod
    def official(cls) -> "ModelConfig":
        """The published COVER model (COVER.pth + ViT-L/14) at its official view sizes."""
        return cls()

    @classmethod
    def from_json(cls, source: Union[str, Path, Mapping[str, Any]]) -> "ModelConfig":
        """Parse a ``config.json`` file (path) or an already-loaded mapping."""
        where = "config"
        if isinstance(source, (str, Path)):
            where = str(source)
            try:
                source = loads_strict(Path(source).read_bytes())
            except OSError as exc:
                raise InputError(f"{where}: cannot read model config ({exc.strerror or exc})") from None
            except JSONRefused as exc:  # NaN, overflowing numbers, duplicate keys, deep nesting
                raise InputError(f"{where}: {exc}") from None
        try:
            return cls._from_dict(source)
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(f"{where}: bad model config: {exc}") from exc

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        if not isinstance(d, Mapping):
            raise ValueError("expected a JSON object")
        _no_unknown(d, cls, "")
        kwargs: dict[str, Any] = {}
        for name, sub in (("technical", SwinConfig), ("aesthetic", ConvNeXtConfig),
                          ("semantic", ClipVitConfig)):
            if name in d:
                kwargs[name] = _sub_config(sub, d[name], name)
        for name in ("gate_channels", "head_hidden"):
            if name in d:
                kwargs[name] = int(d[name])
        if "inputs" in d:
            kwargs["inputs"] = {str(k): tuple(int(v) for v in shape) for k, shape in d["inputs"].items()}
        if d.get("seed") is not None:
            kwargs["seed"] = int(d["seed"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (lists for tuples), as read back by :meth:`from_json`."""
        d = jsonable(asdict(self))
        if self.seed is None:
            del d["seed"]
        return d


def resolve_config(config: Union[None, str, Path, Mapping[str, Any], "ModelConfig"]) -> "ModelConfig":
    """A ModelConfig from nothing (official sizes), a JSON file, a dict or a config: the one
    place every entry point (export, torch backend, benchmark) turns ``--config`` into a model."""
    if config is None:
        return ModelConfig.official()
    if isinstance(config, ModelConfig):
        return config
    return ModelConfig.from_json(config)


def _sub_config(cls, d: Mapping[str, Any], where: str):
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object")
    _no_unknown(d, cls, where + ".")
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        if isinstance(value, (list, tuple)):
            value = tuple(bool(v) if f.name == "frag_biases" else int(v) for v in value)
        elif f.name in ("kind", "inflate_strategy"):
            value = str(value)
        else:
            value = int(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _no_unknown(d: Mapping[str, Any], cls, prefix: str) -> None:
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}")



def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
