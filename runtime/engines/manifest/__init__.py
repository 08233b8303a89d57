"""``manifest.json``: everything a host needs to run an exported COVER engine folder.

``cover-export`` writes one folder per export: three ONNX graphs per mode (optionally TensorRT
engines built from them) and this manifest. A host with no torch -- ``cover-run``, or a C++
program -- reads only the manifest to learn which file to run, with which inputs, how views are
sampled and normalised, and how the score maps become scores. The manifest is checked before any
scoring: schema and version, every listed file's size and sha256, and (by each backend) that the
graphs' real inputs and outputs are the ones listed here.

Layout (schema version 5; :data:`MANIFEST_SCHEMA` is the formal description)::

    schema, schema_version    "cover-engine-manifest", 5 (2: graphs and engines name their own
                              mode and branch, see identity.py; 3: preprocessing names the two
                              colour conversions; 4: ``calibration``; 5: ``head``; older
                              folders are re-exported)
    name, created, precision  export name, UTC time, "fp32" | "fp16"
    opset, batch              ONNX opset; {"min", "opt", "max"} batch sizes engines are built for
    model                     the architecture (ModelConfig.to_dict())
    views                     per branch: sample settings (ViewSpec.to_dict()), video mode
    normalisation             per branch: mean/std on 0..255 RGB, applied as (x - mean) / std
    preprocessing             the view-making rules in words (colour: the default conversion,
                              colour_exact: the other one, colour_default: which is used unless
                              the host is told otherwise), and kernels: the CUDA source
    scores                    branch = mean of its score map; overall = sum of the branches
    weights                   per weight file: name and sha256 (or {"random_seed": n})
    head                      null, or the cover-train head file baked into the graphs:
                              {file, sha256, trained: "heads" | "all" | "unknown",
                              labels_sha256, validation} (its provenance, as recorded in it)
    tools                     versions of the exporting software (null where absent)
    graphs                    list, one per (mode, branch):
        mode, branch          "video" | "image"; "semantic" | "technical" | "aesthetic"
        file                  {path, bytes, sha256} of the .onnx file
        external_data         same for its weights file, or null (used above 2 GB)
        inputs, outputs       [{name, shape, dtype, source?}]; shape uses "batch" for the
                              dynamic batch axis; source of an input is "view" (this branch's
                              normalised view) or "semantic:sem_feats" (that graph's output)
        engine                TensorRT engine built from this graph or null:
                              {file: {...}, profiles: {input: {min, opt, max}}}
    tensorrt                  null, or {version, gpu, compute_capability, timing_cache}
    calibration               null, or a calibration to MOS (a cover-eval --fit-calibration
                              file, same schema): mos = b2 + (b1 - b2) / (1 + exp(-(x - b3) /
                              |b4|)) with x the raw overall score and b1..b4 = fits.overall

Running a mode: the semantic graph first (view -> score_map, sem_feats), then technical and
aesthetic (view, sem_feats -> score_map). Video mode takes sampled clips; image mode takes one
frame (T=1) per branch, the graphs repeat it where the backbone needs two frames.

The package: :mod:`.schema` (format constants and the JSON Schema), :mod:`.model` (the
dataclasses), :mod:`.io` (reading, checking, writing), :mod:`.validator` (the schema checker),
:mod:`.consistency` (rules across fields).
Import from here; the names below are the public ones.
"""
from cover_engine.runtime.engines.manifest.io import (check_io, check_tensorrt, load_manifest,
                                                      validate_manifest, verify_manifest_files,
                                                      write_manifest)
from cover_engine.runtime.engines.manifest.model import (Dim, EngineRef, FileRef, GraphEntry,
                                                         Manifest, TensorRTInfo, TensorSpec,
                                                         jsonable)
from cover_engine.runtime.engines.manifest.schema import (BATCH, MANIFEST_FILE, MANIFEST_SCHEMA,
                                                          MODES, PRECISIONS, PREPROCESSING,
                                                          SCHEMA_ID, SCHEMA_VERSION, SCORE_RULES)

__all__ = [
    "MANIFEST_FILE", "SCHEMA_ID", "SCHEMA_VERSION", "MODES", "PRECISIONS", "BATCH", "SCORE_RULES",
    "PREPROCESSING", "MANIFEST_SCHEMA",
    "Dim", "FileRef", "TensorSpec", "EngineRef", "GraphEntry", "TensorRTInfo", "Manifest",
    "jsonable",
    "validate_manifest", "write_manifest", "load_manifest", "verify_manifest_files", "check_io",
    "check_tensorrt",
]
