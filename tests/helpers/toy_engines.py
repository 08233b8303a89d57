"""Tiny hand-made engine folders with COVER's graph signatures (ONNX, no torch, no export), so
every manifest and backend failure mode is quick to provoke."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from cover_engine.runtime.constants import BRANCHES, views_for_inputs
from cover_engine.runtime.engines.identity import graph_metadata
from cover_engine.runtime.engines.manifest import (BATCH, FileRef, GraphEntry, Manifest,
                                                  TensorSpec, write_manifest)

T, HW, C = 2, 32, 3  # frames, view side (one 32 px fragment for the technical view), feature channels
INPUTS = {b: (1, 3, T, HW, HW) for b in BRANCHES}
ONNX_TYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def toy_graph(branch: str, frames: int, dtype: str,
               mode: str = "video") -> tuple[onnx.ModelProto, GraphEntry]:
    """score_map = mean over channels of the view (+ mean of sem_feats); sem_feats = spatial mean.

    Inputs are ``dtype``; the score map is cast to float32, as the exported fp16 graphs do. The
    graph carries its mode and branch in its metadata, as exported graphs do. The technical and
    aesthetic graphs are the same graph: only that metadata tells them apart.
    """
    f = ONNX_TYPE[dtype]
    view = TensorSpec("view", (BATCH, 3, frames, HW, HW), dtype, "view")
    feats = TensorSpec("sem_feats", (BATCH, C, frames), dtype, "semantic:sem_feats")
    score = TensorSpec("score_map", (BATCH, 1, frames, HW, HW), "float32")
    axes = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    nodes = [helper.make_node("ReduceMean", ["view", "ax1"], ["m"], keepdims=1)]
    inits = [axes("ax1", [1])]
    inputs, outputs = [view], [score]
    if branch == "semantic":
        nodes.append(helper.make_node("ReduceMean", ["view", "ax34"], ["sem_feats"], keepdims=0))
        inits.append(axes("ax34", [3, 4]))
        outputs.append(TensorSpec("sem_feats", feats.shape, dtype))
        last = "m"
    else:
        inputs.append(feats)
        nodes += [helper.make_node("Unsqueeze", ["sem_feats", "ax34"], ["u"]),
                  helper.make_node("ReduceMean", ["u", "ax1"], ["s"], keepdims=1),
                  helper.make_node("Add", ["m", "s"], ["sum"])]
        inits.append(axes("ax34", [3, 4]))
        last = "sum"
    nodes.append(helper.make_node("Cast", [last], ["score_map"], to=TensorProto.FLOAT))

    def info(t: TensorSpec):
        return helper.make_tensor_value_info(t.name, ONNX_TYPE[t.dtype], list(t.shape))

    model = helper.make_model(
        helper.make_graph(nodes, branch, [info(t) for t in inputs], [info(t) for t in outputs],
                          inits), opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, graph_metadata(mode, branch))
    onnx.checker.check_model(model, full_check=True)
    entry = GraphEntry(mode=mode, branch=branch, file=FileRef("", 0, "0" * 64),
                       inputs=tuple(inputs), outputs=tuple(outputs))
    return model, entry


def make_engine_folder(folder: Path, precision: str = "fp32", modes=("video", "image")) -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    dtype = "float16" if precision == "fp16" else "float32"
    graphs = []
    for mode in modes:
        for branch in BRANCHES:
            model, entry = toy_graph(branch, T if mode == "video" else 1, dtype, mode)
            name = f"{branch}.onnx" if mode == "video" else f"{branch}-image.onnx"
            onnx.save_model(model, str(folder / name))
            graphs.append(replace(entry, mode=mode, file=FileRef.of(folder, folder / name)))
    manifest = Manifest(name="toy", created="2024-01-01T00:00:00+00:00", precision=precision,
                        opset=18, batch={"min": 1, "opt": 1, "max": 4},
                        model={"inputs": {b: list(s) for b, s in INPUTS.items()}},
                        views=views_for_inputs(INPUTS), weights={"random_seed": 0},
                        tools={"cover_engine": "test", "tensorrt": None}, graphs=tuple(graphs))
    write_manifest(folder, manifest)
    return manifest


def toy_views(frames: int, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal((batch, 3, frames, HW, HW)).astype(np.float32)
            for b in BRANCHES}


def toy_maps(views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the toy graphs compute, in numpy."""
    feats = views["semantic"].mean(axis=(3, 4))
    extra = feats.mean(axis=1)[:, None, :, None, None]
    return {b: views[b].mean(axis=1, keepdims=True) + (0 if b == "semantic" else extra)
            for b in BRANCHES}
