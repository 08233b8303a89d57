"""The manifest's format: its constants, the words every manifest carries, and its JSON Schema.

Everything a reader of ``manifest.json`` must agree on with its writer lives here;
:mod:`.model` turns documents into dataclasses and :mod:`.io` reads, checks and writes them.
"""
from __future__ import annotations

from typing import Any

from cover_engine.runtime.constants import BRANCHES, DEFAULT_COLOUR
from cover_engine.runtime.eval.calibration_schema import CALIBRATION_SCHEMA

#: A calibration embedded in a manifest: the calibration file's schema, without its "$schema".
CALIBRATION_BODY: dict[str, Any] = {k: v for k, v in CALIBRATION_SCHEMA.items() if k != "$schema"}

__all__ = ["MANIFEST_FILE", "SCHEMA_ID", "SCHEMA_VERSION", "MODES", "PRECISIONS", "BATCH",
           "SCORE_RULES", "PREPROCESSING", "MANIFEST_SCHEMA", "MAX_FRAMES", "MAX_PIXELS",
           "MAX_GRID", "MAX_BATCH", "MAX_DIM", "MAX_FILE_BYTES", "OPSET_RANGE", "STD_RANGE",
           "MAX_MEAN", "MAX_TEXT"]

MANIFEST_FILE = "manifest.json"
SCHEMA_ID = "cover-engine-manifest"
#: 3: preprocessing gained colour_default / colour_exact (decord-exact default colour).
#: 4: an optional calibration to MOS (``calibration``: null or a calibration file's content).
#: 5: ``head`` names the cover-train head file baked into the graphs (or null).
SCHEMA_VERSION = 5
MODES: tuple[str, ...] = ("video", "image")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
#: Name of the dynamic batch axis in graph shapes.
BATCH = "batch"

# Ranges of a manifest's numbers. Generous for any model this engine runs (official: 40-frame
# clips, 512 px views, engines for batches up to 8), tight enough that an edited or hostile value
# can neither ask for absurd memory nor divide by zero before a graph is even loaded.
#: Frames per view (clip_len), segments (t_frag), frame step, aligned run, clips.
MAX_FRAMES = 1024
#: Pixels along one side of a view or of a fragment.
MAX_PIXELS = 8192
#: Fragments along one side of the grid.
MAX_GRID = 256
#: Batch sizes engines are built for.
MAX_BATCH = 4096
#: Any one dimension of a graph input or output.
MAX_DIM = 1 << 20
#: Size of any listed file (1 TiB).
MAX_FILE_BYTES = 1 << 40
#: ONNX opsets an export may declare (17 is the exporter's floor).
OPSET_RANGE = (17, 64)
#: Normalisation std per channel, on 0..255 RGB: positive and large enough that (x - mean) / std
#: stays finite in fp16 (x <= 255, fp16 max 65504).
STD_RANGE = (0.01, 1.0e4)
#: Largest |mean| per channel, on 0..255 RGB.
MAX_MEAN = 1.0e4
#: Longest string (names, paths, versions).
MAX_TEXT = 4096
#: How the scores are formed from the graphs' score maps (the same words go into every manifest).
SCORE_RULES: dict[str, Any] = {
    "order": list(BRANCHES),
    "branch": "mean over every element of the branch's score_map (per batch item)",
    "overall": "semantic + technical + aesthetic",
}

#: How views are made from decoded frames: what a host without this package must implement to
#: reproduce ``cover-run`` (the CPU path in ``runtime/`` and the CUDA kernels implement exactly
#: this; the kernel source travels in the folder, see ``kernels``).
PREPROCESSING: dict[str, str] = {
    "decode": "each needed frame decoded once, in presentation order; frame count n = the "
              "stream's frame count, or counted by demuxing when the container has none",
    "colour_default": DEFAULT_COLOUR,
    "colour": "decord: YUV -> RGB exactly as upstream's decord (FFmpeg 4.1 swscale, x86-64) with "
              "the frame's matrix (BT.601/709/2020/240M/FCC; BT.601 when unsignalled) and range "
              "(limited when unsignalled): 8-bit 4:2:0 with an even height in 16-bit fixed point "
              "with nearest chroma; odd heights, more bits: chroma rows from swscale's bilinear "
              "filter reduced to 'first row, or the two averaged', then swscale's lookup tables; "
              "odd widths and 4:4:4: full-chroma integer arithmetic. Formulas and constants: "
              "colour.py (sws_conversion, sws_levels) and the kernels. Rotation metadata that is "
              "a multiple of 90 degrees turns the YUV planes before conversion",
    "colour_exact": "exact: YUV -> RGB with the signalled matrix and range in float32, chroma "
                    "nearest-neighbour, rounded half to even to uint8; rotation metadata not "
                    "applied",
    "temporal": "per view, fsize_t = clip_len // t_frag, tlen = n // t_frag, high = tlen - "
                "fsize_t * frame_interval; segment i (0 <= i < t_frag) takes frames i * tlen + r "
                "+ k * frame_interval (0 <= k < fsize_t), modulo n, with r = high // 2 if high > 0 "
                "else 0",
    "image": "a still image is one frame, T = 1, for every view; run the 'image' graphs",
    "resize": "bilinear, align_corners=False, no antialiasing, aspect ratio not kept: per axis "
              "scale = float32(in) / float32(out), src = max(scale * (o + 0.5) - 0.5, 0), i0 = "
              "floor(src), i1 = min(i0 + 1, in - 1), w = src - i0 (float32); width pass then "
              "height pass, each value fma(a, 1 - w, b * w); round half to even to uint8",
    "fragments": "grid of fragments_h x fragments_w cells: cell start min(H // fragments_h * i, "
                 "H - fsize_h), crop fsize_h x fsize_w at start + offset, offset = (H // "
                 "fragments_h - fsize_h) // 2 when positive else 0 (same for width); one set of "
                 "offsets for every `aligned` frames",
    "upsample": "frames with min(H / (fragments_h * fsize_h), W / (fragments_w * fsize_w)) < 1 "
                "are first upsampled for the fragment view by s = 1 / ratio: out = int(n * s), "
                "the resize rule with scale = float32(1 / s) on x / 255, then * 255 truncated to "
                "uint8; the grid is still computed from the original size (upstream's quirk)",
    "normalise": "float32 (x - mean) / std per RGB channel, layout (B, 3, T, H, W)",
}

_DTYPES = ("float32", "float16")
_SHA256 = "^[0-9a-f]{64}$"
_TEXT = {"type": "string", "maxLength": MAX_TEXT}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}


def _count(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


_FILE_REF = {
    "type": "object",
    "required": ["path", "bytes", "sha256"],
    "properties": {"path": _NAME,
                   "bytes": _count(1, MAX_FILE_BYTES),
                   "sha256": {"type": "string", "pattern": _SHA256}},
    "additionalProperties": False,
}
_DIM = {"oneOf": [_count(1, MAX_DIM), {"const": BATCH}]}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "dtype"],
    "properties": {
        "name": _NAME,
        "shape": {"type": "array", "items": _DIM, "minItems": 1, "maxItems": 8},
        "dtype": {"enum": list(_DTYPES)},
        "source": _NAME,
    },
    "additionalProperties": False,
}
_SHAPE = {"type": "array", "items": _count(1, MAX_DIM), "minItems": 1, "maxItems": 8}
_MEAN3 = {"type": "array", "items": {"type": "number", "minimum": -MAX_MEAN, "maximum": MAX_MEAN},
          "minItems": 3, "maxItems": 3}
_STD3 = {"type": "array", "items": {"type": "number", "minimum": STD_RANGE[0],
                                    "maximum": STD_RANGE[1]},
         "minItems": 3, "maxItems": 3}
#: One branch's sampling (ViewSpec.to_dict()); sizes that do not apply to its kind are 0.
_VIEW = {
    "type": "object",
    "required": ["name", "kind", "clip_len", "t_frag", "frame_interval", "mean", "std"],
    "properties": {
        "name": {"enum": list(BRANCHES)},
        "kind": {"enum": ["resize", "fragments"]},
        "clip_len": _count(1, MAX_FRAMES),
        "t_frag": _count(1, MAX_FRAMES),
        "frame_interval": _count(1, MAX_FRAMES),
        "num_clips": _count(1, MAX_FRAMES),
        "size_h": _count(0, MAX_PIXELS), "size_w": _count(0, MAX_PIXELS),
        "fragments_h": _count(0, MAX_GRID), "fragments_w": _count(0, MAX_GRID),
        "fsize_h": _count(0, MAX_PIXELS), "fsize_w": _count(0, MAX_PIXELS),
        "aligned": _count(0, MAX_FRAMES),
        "mean": _MEAN3, "std": _STD3,
    },
    "additionalProperties": False,
}

#: JSON Schema (draft 2020-12) of ``manifest.json``. The runtime checks manifests with the small
#: validator of :mod:`.validator` (jsonschema is not a runtime dependency); the tests also use
#: jsonschema.
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cover-engine manifest",
    "type": "object",
    "required": ["schema", "schema_version", "name", "created", "precision", "opset", "batch",
                 "model", "views", "normalisation", "preprocessing", "scores", "weights", "head",
                 "tools", "graphs", "tensorrt", "calibration"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "name": _NAME,
        "created": _TEXT,
        "precision": {"enum": list(PRECISIONS)},
        "opset": _count(*OPSET_RANGE),
        "batch": {
            "type": "object", "required": ["min", "opt", "max"],
            "properties": {k: _count(1, MAX_BATCH) for k in ("min", "opt", "max")},
            "additionalProperties": False,
        },
        "model": {"type": "object"},
        "views": {
            "type": "object", "required": list(BRANCHES),
            "properties": {b: _VIEW for b in BRANCHES},
            "additionalProperties": False,
        },
        "normalisation": {
            "type": "object", "required": list(BRANCHES),
            "properties": {b: {
                "type": "object", "required": ["mean", "std", "input"],
                "properties": {"mean": _MEAN3, "std": _STD3, "input": _TEXT},
                "additionalProperties": False,
            } for b in BRANCHES},
            "additionalProperties": False,
        },
        "preprocessing": {
            "type": "object", "required": sorted(PREPROCESSING) + ["kernels"],
            "properties": {"kernels": {"oneOf": [{"type": "null"}, _FILE_REF]}},
            "additionalProperties": _TEXT,
        },
        "scores": {
            "type": "object", "required": ["order", "branch", "overall"],
            "properties": {"order": {"type": "array", "items": {"enum": list(BRANCHES)}},
                           "branch": _TEXT, "overall": _TEXT},
        },
        "weights": {"type": "object"},
        "head": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["file", "sha256", "trained"],
            "properties": {"file": {**_TEXT, "minLength": 1},
                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                           "trained": {"enum": ["heads", "all", "unknown"]},
                           "labels_sha256": {"type": ["string", "null"], "maxLength": MAX_TEXT},
                           "validation": {"type": ["object", "null"]}},
            "additionalProperties": False,
        }]},
        "tools": {"type": "object",
                  "additionalProperties": {"type": ["string", "null"], "maxLength": MAX_TEXT}},
        "graphs": {
            "type": "array", "minItems": len(BRANCHES), "maxItems": len(MODES) * len(BRANCHES),
            "items": {
                "type": "object",
                "required": ["mode", "branch", "file", "external_data", "inputs", "outputs",
                             "engine"],
                "properties": {
                    "mode": {"enum": list(MODES)},
                    "branch": {"enum": list(BRANCHES)},
                    "file": _FILE_REF,
                    "external_data": {"oneOf": [{"type": "null"}, _FILE_REF]},
                    "inputs": {"type": "array", "minItems": 1, "maxItems": 8, "items": _TENSOR},
                    "outputs": {"type": "array", "minItems": 1, "maxItems": 8, "items": _TENSOR},
                    "engine": {"oneOf": [{"type": "null"}, {
                        "type": "object", "required": ["file", "profiles"],
                        "properties": {
                            "file": _FILE_REF,
                            "profiles": {"type": "object", "additionalProperties": {
                                "type": "object", "required": ["min", "opt", "max"],
                                "properties": {"min": _SHAPE, "opt": _SHAPE, "max": _SHAPE},
                                "additionalProperties": False}},
                        },
                        "additionalProperties": False,
                    }]},
                },
                "additionalProperties": False,
            },
        },
        "calibration": {"oneOf": [{"type": "null"}, CALIBRATION_BODY]},
        "tensorrt": {"oneOf": [{"type": "null"}, {
            "type": "object",
            "required": ["version", "gpu", "compute_capability", "timing_cache"],
            "properties": {"version": _TEXT, "gpu": _TEXT,
                           "compute_capability": {"type": "string", "pattern": r"^\d+\.\d+$"},
                           "timing_cache": {"type": ["string", "null"], "maxLength": MAX_TEXT}},
            "additionalProperties": False,
        }]},
    },
    "additionalProperties": False,
}
