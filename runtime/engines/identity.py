"""Which graph is which: the mode and branch each exported graph and engine carries itself.

``manifest.json`` says which file serves which branch, but a manifest is an editable text file:
swap its technical and aesthetic entries (checksums and all) and every file still verifies, the
inputs may even have the same shapes, and the scores come out with the branches crossed. So
``cover-export`` writes the mode and branch into each ONNX graph's ``metadata_props`` and names
each TensorRT network after them, and each backend compares what it actually loaded with the
manifest entry it loaded it for, before the first score.
"""
from __future__ import annotations

from typing import Mapping, Optional

from cover_engine.runtime.errors import EngineError

__all__ = ["METADATA_MODE", "METADATA_BRANCH", "ENGINE_NAME_PREFIX", "graph_metadata",
           "engine_name", "check_graph_metadata", "check_engine_name"]

#: ``metadata_props`` keys of an exported ONNX graph.
METADATA_MODE = "cover_engine.mode"
METADATA_BRANCH = "cover_engine.branch"
#: TensorRT network (and so engine) names are this prefix + ``mode/branch``.
ENGINE_NAME_PREFIX = "cover-engine:"

_REEXPORT = "re-export the engines with `cover-export`"


def graph_metadata(mode: str, branch: str) -> dict[str, str]:
    """The ``metadata_props`` entries that identify one exported graph."""
    return {METADATA_MODE: mode, METADATA_BRANCH: branch}


def engine_name(mode: str, branch: str) -> str:
    """The name given to the TensorRT network built for one graph (kept in the engine)."""
    return f"{ENGINE_NAME_PREFIX}{mode}/{branch}"


def _refuse(where: str, got: str, graph, what: str) -> None:
    raise EngineError(f"{where}: this {what} is the {got} graph, but manifest.json lists it as "
                      f"the {graph.key} graph (entries swapped or edited); {_REEXPORT}")


def check_graph_metadata(graph, metadata: Mapping[str, str], where: str) -> None:
    """The ONNX graph loaded for manifest entry ``graph`` says it is that mode and branch."""
    mode, branch = metadata.get(METADATA_MODE), metadata.get(METADATA_BRANCH)
    if mode is None or branch is None:
        raise EngineError(f"{where}: the graph does not say which branch it is (no "
                          f"{METADATA_BRANCH!r} metadata; not written by this version's "
                          f"`cover-export`); {_REEXPORT}")
    if (mode, branch) != (graph.mode, graph.branch):
        _refuse(where, f"{mode}/{branch}", graph, "graph")


def check_engine_name(graph, name: Optional[str], where: str) -> None:
    """The TensorRT engine loaded for manifest entry ``graph`` was built for that mode and branch."""
    if not name or not name.startswith(ENGINE_NAME_PREFIX):
        raise EngineError(f"{where}: the engine does not say which branch it is (named "
                          f"{name!r}, not {engine_name(graph.mode, graph.branch)!r}); {_REEXPORT}")
    if name != engine_name(graph.mode, graph.branch):
        _refuse(where, name[len(ENGINE_NAME_PREFIX):], graph, "engine")
