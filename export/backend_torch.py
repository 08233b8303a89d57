"""``--backend torch``: the export-side PyTorch model as an inference backend.

This is the upstream-equivalent baseline (fp32 eager on CPU or CUDA) and, with
``precision="fp16"`` or ``"bf16"`` on CUDA, the GPU path that can be measured where TensorRT is
absent: autocast (LayerNorm, softmax and reductions stay in fp32 under autocast), PyTorch's fused
scaled-dot-product attention, and optionally ``torch.compile`` and CUDA-graph replay.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Optional

import numpy as np
import torch

from cover_engine.runtime.constants import (CLIP_WEIGHTS, COVER_WEIGHTS, TORCH_MODES, ViewSpec,
                                            views_for_inputs)
from cover_engine.runtime.engines.base import Backend, check_views
from cover_engine.runtime.errors import CoverError
from .config import ModelConfig, resolve_config
from .cover import COVER
from .weights import load_model

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_model(config=None, *, weights=None, clip_weights=None, random_weights: bool = False,
                seed: int = 0, head=None, log=print) -> tuple[COVER, ModelConfig]:
    """The float32 eval-mode model, with official weights or (for speed tests) seeded random ones.

    With real weights, ``model.weight_files`` holds the two resolved paths (export manifests
    record their checksums); with random weights it is None. ``head``: a ``cover-train`` head
    file, refused unless it was trained on these weights and config, then applied.
    """
    cfg = resolve_config(config)
    if random_weights:
        torch.manual_seed(seed)
        model = COVER(cfg)
        model.weight_files = None
    else:
        from cover_engine.runtime.fetch import resolve_weights

        official = cfg == ModelConfig.official()
        files = (resolve_weights(COVER_WEIGHTS, weights, official=official),
                 resolve_weights(CLIP_WEIGHTS, clip_weights, official=official))
        model = load_model(cfg, *files)
        model.weight_files = files
    if head is not None:
        from .train.headfile import load_head
        from .weights import weight_identity

        identity = ({"random_seed": seed} if random_weights
                    else weight_identity(cfg, *model.weight_files))
        load_head(model, head, cfg, identity, log=log)
    return model.float().eval(), cfg


def _check_device(device: str) -> None:
    """A device torch can use, or one CoverError line (never torch's traceback, never the CPU
    in place of a GPU that was asked for)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise CoverError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if parsed.type == "cpu":
        return
    if parsed.type != "cuda":
        raise CoverError(f"--device {device}: the torch backend runs on cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise CoverError(f"--device {device} asked for, but torch sees no CUDA GPU here")
    count = torch.cuda.device_count()
    if (parsed.index or 0) >= count:
        raise CoverError(f"--device {device}: torch sees {count} CUDA GPU(s), "
                         f"cuda:0..cuda:{count - 1}")


class TorchBackend(Backend):
    """Runs the three branches with PyTorch; ``run`` maps numpy views to numpy score maps.

    On CUDA with ``precision="fp16"`` or ``"bf16"``: autocast (LayerNorm, softmax and reductions
    stay fp32), attention through ``scaled_dot_product_attention`` (flash / memory-efficient
    kernels, in the ViT and in the Swin's window attention), and no host synchronisation inside
    the model. ``compile`` wraps the forward in ``torch.compile``; ``cuda_graphs`` captures the
    whole forward once per input shape into a CUDA graph (static input and output buffers, one
    memory pool shared by the graphs) and replays it, removing the launch cost of the
    model's many small kernels.
    """

    def __init__(self, *, config=None, weights=None, clip_weights=None, device: str = "cpu",
                 precision: str = "fp32", random_weights: bool = False, seed: int = 0,
                 compile: bool = False, cuda_graphs: bool = False,
                 model: Optional[COVER] = None, head=None, log=print):
        if precision not in PRECISIONS:
            raise CoverError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        _check_device(device)
        if cuda_graphs and not device.startswith("cuda"):
            raise CoverError("CUDA graphs need a CUDA device (--device cuda)")
        if model is None:
            model, cfg = build_model(config, weights=weights, clip_weights=clip_weights,
                                     random_weights=random_weights, seed=seed, head=head, log=log)
        elif head is not None:
            raise ValueError("give a head file to build_model, not beside a ready model")
        else:
            cfg = resolve_config(config)
        #: ``{"file", "sha256"}`` of the cover-train head in use (calibrations record it).
        self.head_identity = None
        if head is not None:
            from cover_engine.runtime.model_identity import head_record

            self.head_identity = head_record(head)
        self.device = torch.device(device)
        self.precision = precision
        #: The seed of random weights (None with real weights): part of the model's identity.
        self.random_seed = seed if getattr(model, "weight_files", None) is None else None
        self.model = model.to(self.device).eval()
        self.config = cfg
        self.specs: dict[str, ViewSpec] = views_for_inputs(cfg.inputs)
        self.name = ("torch" if precision == "fp32" else f"torch-{precision}") + \
            ("-compile" if compile else "") + ("-graphs" if cuda_graphs else "")
        self._forward = torch.compile(self.model.forward) if compile else self.model.forward
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None

    @classmethod
    def from_mode(cls, mode: str = "eager", **kwargs) -> "TorchBackend":
        """A backend for one of :data:`TORCH_MODES`."""
        if mode not in TORCH_MODES:
            raise CoverError(f"unknown torch mode {mode!r} (choose from {', '.join(TORCH_MODES)})")
        return cls(compile="compile" in mode, cuda_graphs="cuda-graphs" in mode, **kwargs)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def _call(self, views: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._autocast():
            maps = self._forward(views["semantic"], views["technical"], views["aesthetic"])
        return {k: v.float() for k, v in maps.items()}

    @torch.inference_mode()
    def run_tensors(self, views: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Score maps for views already on the device (used by the benchmark)."""
        if self.cuda_graphs:
            return self._replay(views)
        return self._call(views)

    def _replay(self, views: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy the views into the static inputs of this shape's graph (captured on first
        use, after two warm-up runs on a side stream as CUDA requires) and replay it."""
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(views.items()))
        if key not in self._graphs:
            static = {k: v.detach().clone() for k, v in views.items()}
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._call(static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = self._call(static)
            self._graphs[key] = (graph, static, outputs)
        graph, static, outputs = self._graphs[key]
        for k, v in views.items():
            static[k].copy_(v)
        graph.replay()
        return {k: v.clone() for k, v in outputs.items()}

    def run(self, views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_views(views)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(self.device)
                   for k, v in views.items()}
        return {k: v.cpu().numpy() for k, v in self.run_tensors(tensors).items()}

    def close(self) -> None:
        """Drop this backend's reference to the model (a shared model lives on elsewhere)."""
        self.model = None
        self._forward = None
        self._graphs.clear()
