"""Sampling against upstream's own reference views (``$COVER_VECTORS/preprocess``).

Sample settings come from the vectors' ``sample_types.json``, so a vector set made with other
settings is checked the same way. Tolerances are the README's: indices exact, fragments exact,
resized views (and fragments cut from an upsampled frame) within one level and >= 99.9% exact.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cover_engine.runtime.constants import ViewSpec
from cover_engine.runtime.views.geometry import fragment_grid
from cover_engine.runtime.views.sampling import frame_indices
from cover_engine.runtime.views.assemble import build_views

pytestmark = pytest.mark.vectors


@pytest.fixture(scope="module")
def preprocess(vectors_dir):
    folder = vectors_dir / "preprocess"
    types = json.loads((folder / "sample_types.json").read_text())
    specs = {name: ViewSpec.from_sample_type(name, opts) for name, opts in types.items()}
    with np.load(folder / "views.npz") as data:
        arrays = {key: data[key] for key in data.files}
    return specs, arrays


def cases(arrays) -> list[str]:
    return sorted({key.split("/")[0] for key in arrays if key.endswith("/frames")})


def test_indices_exact_for_every_length(preprocess):
    specs, arrays = preprocess
    keys = [k for k in arrays if k.startswith("indices/")]
    assert keys, "no indices in the vectors"
    for key in keys:
        _, n, view = key.split("/")
        np.testing.assert_array_equal(frame_indices(int(n), specs[view]), arrays[key], err_msg=key)


def test_views_match_upstream(preprocess):
    specs, arrays = preprocess
    assert cases(arrays), "no view cases in the vectors"
    for case in cases(arrays):
        frames = arrays[f"{case}/frames"]
        views = build_views(dict(enumerate(frames)), len(frames), specs,
                            is_image=case == "image")
        for name, spec in specs.items():
            ref = arrays[f"{case}/view/{name}"]
            got = views[name]
            assert got.shape == ref.shape and got.dtype == np.uint8, (case, name)
            diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
            upsampled = spec.kind == "fragments" and \
                fragment_grid(*frames.shape[1:3], spec).upsample is not None
            if spec.kind == "fragments" and not upsampled:
                assert diff.max() == 0, (case, name)
            else:
                assert diff.max() <= 1, (case, name)
                assert (diff == 0).mean() >= 0.999, (case, name)
