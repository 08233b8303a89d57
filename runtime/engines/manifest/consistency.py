"""Rules across a manifest's fields that a JSON Schema cannot state.

Run on a document the schema already accepted (so every value has its type and range). Each rule
guards something the runtime would otherwise do with the value: sample ``t_frag`` segments of
``clip_len // t_frag`` frames (zero frames, or fewer than the graph takes), cut a fragment grid
(zero fragments), bind engine profiles (shapes that were never built), normalise with the
``views`` statistics while a C++ host reads the ``normalisation`` copy of them.
"""
from __future__ import annotations

from typing import Any, Mapping

from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.engines.manifest.schema import BATCH, MAX_PIXELS

__all__ = ["consistency_problems"]

_BATCH_KEYS = ("min", "opt", "max")


def consistency_problems(data: Mapping[str, Any]) -> list[str]:
    """What contradicts itself in a schema-valid manifest document (empty: nothing)."""
    problems: list[str] = []
    batch = data["batch"]
    if not batch["min"] <= batch["opt"] <= batch["max"]:
        problems.append(f"batch: needs min <= opt <= max, got {batch['min']}, {batch['opt']}, "
                        f"{batch['max']}")
    for branch in BRANCHES:
        problems += _view_problems(branch, data["views"][branch])
        norm, view = data["normalisation"][branch], data["views"][branch]
        if list(norm["mean"]) != list(view["mean"]) or list(norm["std"]) != list(view["std"]):
            problems.append(f"normalisation.{branch}: mean/std differ from views.{branch} (the "
                            "runtime uses the views' values, a host reading normalisation would "
                            "not)")
    for i, graph in enumerate(data["graphs"]):
        problems += _graph_problems(f"graphs[{i}]", graph, data["views"], batch)
    return problems


def _view_problems(branch: str, v: Mapping[str, Any]) -> list[str]:
    at = f"views.{branch}"
    out = []
    if v["name"] != branch:
        out.append(f"{at}.name: is {v['name']!r}, listed under {branch!r}")
    if v["t_frag"] > v["clip_len"] or v["clip_len"] % v["t_frag"]:
        out.append(f"{at}: clip_len {v['clip_len']} does not split into t_frag {v['t_frag']} "
                   "equal segments")
    if v["kind"] == "resize":
        if v.get("size_h", 0) < 1 or v.get("size_w", 0) < 1:
            out.append(f"{at}: a resize view needs size_h and size_w >= 1")
    else:
        sizes = {k: v.get(k, 0) for k in ("fragments_h", "fragments_w", "fsize_h", "fsize_w")}
        if min(sizes.values()) < 1:
            out.append(f"{at}: a fragments view needs fragments_h/w and fsize_h/w >= 1, got "
                       + ", ".join(f"{k} {n}" for k, n in sizes.items()))
        elif max(sizes["fragments_h"] * sizes["fsize_h"],
                 sizes["fragments_w"] * sizes["fsize_w"]) > MAX_PIXELS:
            out.append(f"{at}: fragment grid is larger than {MAX_PIXELS} pixels")
        aligned = v.get("aligned", 0)
        if aligned < 1 or v["clip_len"] % aligned:
            out.append(f"{at}: aligned {aligned} does not divide clip_len {v['clip_len']}")
    return out


def _view_size(v: Mapping[str, Any]) -> tuple[int, int]:
    if v["kind"] == "resize":
        return v.get("size_h", 0), v.get("size_w", 0)
    return (v.get("fragments_h", 0) * v.get("fsize_h", 0),
            v.get("fragments_w", 0) * v.get("fsize_w", 0))


def _graph_problems(at: str, g: Mapping[str, Any], views: Mapping[str, Any],
                    batch: Mapping[str, int]) -> list[str]:
    out = []
    for kind in ("inputs", "outputs"):
        for t in g[kind]:
            shape = t["shape"]
            if shape[0] != BATCH or BATCH in shape[1:]:
                out.append(f"{at} ({g['mode']}/{g['branch']}) {t['name']}: shape {shape} must "
                           f"have {BATCH!r} as its first axis and only there")
        names = [t["name"] for t in g[kind]]
        if len(set(names)) != len(names):
            out.append(f"{at} ({g['mode']}/{g['branch']}): {kind} names repeat: {names}")
    view = views[g["branch"]]
    frames = view["clip_len"] if g["mode"] == "video" else 1
    want = [BATCH, 3, frames, *_view_size(view)]
    for t in g["inputs"]:
        if t.get("source", "view") == "view" and list(t["shape"]) != want:
            out.append(f"{at} ({g['mode']}/{g['branch']}) {t['name']}: shape {t['shape']} is not "
                       f"the view views.{g['branch']} makes ({want})")
    engine = g["engine"]
    if engine is not None:
        inputs = {t["name"]: t["shape"] for t in g["inputs"]}
        if set(engine["profiles"]) != set(inputs):
            out.append(f"{at}.engine.profiles: for {sorted(engine['profiles'])}, the graph's "
                       f"inputs are {sorted(inputs)}")
        else:
            for name, profile in engine["profiles"].items():
                for key in _BATCH_KEYS:
                    expect = [batch[key] if d == BATCH else d for d in inputs[name]]
                    if list(profile[key]) != expect:
                        out.append(f"{at}.engine.profiles.{name}.{key}: {profile[key]}, the "
                                   f"input at batch {key} {batch[key]} is {expect}")
    return out
