"""Weight loading: official key names and shapes, strict checks, clear errors on bad files."""
from __future__ import annotations

import functools
import io
import json
import pickle
import subprocess
import sys
import warnings

import pytest
import torch

from cover_engine.export.config import ClipVitConfig, ConvNeXtConfig, ModelConfig, SwinConfig
from cover_engine.export.cover import COVER
from cover_engine.export.weights import (CLIP_PREFIX, expected_keys, file_key, load_clip_archive,
                                         load_cover_checkpoint, load_model)
from cover_engine.runtime.errors import WeightsError

SMALL = ModelConfig(
    technical=SwinConfig(embed_dim=4, depths=(1, 2), num_heads=(1, 2), window_size=(2, 3, 3),
                         frag_biases=(True, False)),
    aesthetic=ConvNeXtConfig(depths=(2, 1), dims=(4, 8)),
    semantic=ClipVitConfig(width=16, layers=1, heads=2, patch_size=8, output_dim=8),
    gate_channels=8, head_hidden=4,
    inputs={"semantic": (1, 3, 2, 32, 32), "technical": (1, 3, 4, 32, 32),
            "aesthetic": (1, 3, 4, 32, 32)})

#: Tensors the real files carry that the model does not use.
UNUSED_COVER = {"semantic_backbone.prompt_learner.ctx": torch.zeros(2, 4, 16)}
UNUSED_CLIP = {"visual.positional_embedding": torch.zeros(17, 16, dtype=torch.half),
               "transformer.resblocks.0.ln_1.weight": torch.ones(16, dtype=torch.half),
               "logit_scale": torch.tensor(4.6, dtype=torch.half)}


def split_files(model: COVER) -> tuple[dict, dict]:
    """A model's tensors as COVER.pth (float32) and CLIP archive (float16) state dicts."""
    cover, clip = dict(UNUSED_COVER), dict(UNUSED_CLIP)
    for name, t in model.state_dict().items():
        kind, key = file_key(name)
        if kind == "clip":
            clip[key] = t.half() if t.is_floating_point() else t
        else:
            cover[key] = t
    return cover, clip


@pytest.fixture()
def small_files(tmp_path):
    torch.manual_seed(0)
    model = COVER(SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cover, clip = split_files(model)
    cover_path, clip_path = tmp_path / "COVER.pth", tmp_path / "clip.pt"
    torch.save({"state_dict": cover}, cover_path)
    torch.save(clip, clip_path)
    return model, cover, clip, cover_path, clip_path


def views(batch: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    return tuple(torch.randn(batch, *SMALL.inputs[b][1:], generator=gen)
                 for b in ("semantic", "technical", "aesthetic"))


# ----------------------------------------------------------------------------- official names

@pytest.mark.vectors
def visual_modules(clip: dict) -> "torch.nn.Module":
    """A module tree holding the ``visual.*`` tensors of ``clip`` under OpenAI's names (what a
    TorchScript CLIP archive's state dict has)."""
    visual = torch.nn.Module()
    for key, t in clip.items():
        if key.startswith(CLIP_PREFIX):
            *parts, leaf = key[len(CLIP_PREFIX):].split(".")
            mod = visual
            for part in parts:
                if not hasattr(mod, part):
                    mod.add_module(part, torch.nn.Module())
                mod = getattr(mod, part)
            mod.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
    return visual


def test_official_model_needs_exactly_the_published_tensors(vectors_dir):
    keys = vectors_dir / "keys"
    cover = {k: tuple(v) for k, v in json.loads((keys / "cover_pth_keys.json").read_text()).items()
             if not k.startswith("semantic_backbone.prompt_learner.")}
    clip = {k: tuple(v) for k, v in json.loads((keys / "clip_vit_l14_keys.json").read_text()).items()
            if k.startswith(CLIP_PREFIX) and k != "visual.positional_embedding"}
    needed = expected_keys(ModelConfig.official())
    assert {k: v for k, v in needed.items() if not k.startswith(CLIP_PREFIX)} == cover
    assert {k: v for k, v in needed.items() if k.startswith(CLIP_PREFIX)} == clip


def test_expected_keys_allocates_no_weights():
    """The official model is ~1.5 GB in float32; its key list must not cost that."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) pytest parent.
    code = ("from cover_engine.export.config import ModelConfig; "
            "from cover_engine.export.weights import expected_keys; "
            "n = len(expected_keys(ModelConfig.official())); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
            "print(n, hwm.split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, peak_kb = (int(v) for v in out.stdout.split())
    assert count == 401 + 295  # COVER.pth minus 3 prompt tensors, ViT-L tower minus pos. embedding
    assert peak_kb < 900_000, f"peak RSS {peak_kb / 1e3:.0f} MB"


# ----------------------------------------------------------------------------- loading

def test_load_model_round_trip(small_files):
    model, _, _, cover_path, clip_path = small_files
    loaded = load_model(SMALL, cover_path, clip_path)
    assert not loaded.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.parameters())
    # the CLIP archive is fp16: the reference sees the same rounding
    with torch.no_grad():
        for p in model.semantic_backbone.parameters():
            p.copy_(p.half().float())
        expected, got = model(*views(2)), loaded(*views(2))
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_bare_state_dict_and_jit_archive_are_accepted(small_files, tmp_path):
    _, cover, clip, _, _ = small_files
    bare = tmp_path / "bare.pth"
    torch.save(cover, bare)
    assert load_cover_checkpoint(bare).keys() == cover.keys()

    class Holder(torch.nn.Module):  # a TorchScript archive whose state dict has OpenAI's names
        def __init__(self):
            super().__init__()
            self.visual = visual_modules(clip)

        def forward(self, x):
            return x

    archive = tmp_path / "clip_jit.pt"
    torch.jit.save(torch.jit.script(Holder()), str(archive))
    loaded = load_clip_archive(archive)
    want = {k: v for k, v in clip.items() if k.startswith(CLIP_PREFIX)}
    assert loaded.keys() == want.keys()
    assert all(torch.equal(loaded[k], want[k]) for k in want)


@pytest.mark.parametrize("which,key", [("cover", "technical_backbone.layers.1.blocks.1.attn.qkv.weight"),
                                       ("cover", "smtc_gate_aesc.out_project_y.bias"),
                                       ("clip", "visual.transformer.resblocks.0.ln_2.bias"),
                                       ("clip", "visual.proj")])
def test_missing_tensor_is_named(small_files, tmp_path, which, key):
    _, cover, clip, cover_path, clip_path = small_files
    files = {"cover": cover, "clip": clip}
    del files[which][key]
    path = tmp_path / f"broken_{which}.pt"
    torch.save(files[which], path)
    args = (path, clip_path) if which == "cover" else (cover_path, path)
    with pytest.raises(WeightsError, match="missing") as err:
        load_model(SMALL, *args)
    assert key in str(err.value) and str(path) in str(err.value)


def test_wrong_shape_is_named(small_files, tmp_path):
    _, cover, _, _, clip_path = small_files
    key = "aesthetic_backbone.stages.0.1.dwconv.weight"
    cover[key] = torch.zeros(4, 1, 1, 7, 7)  # temporal kernel 1 where the model has 3
    path = tmp_path / "misshaped.pth"
    torch.save({"state_dict": cover}, path)
    with pytest.raises(WeightsError, match="wrong shape") as err:
        load_model(SMALL, path, clip_path)
    assert key in str(err.value) and str(path) in str(err.value) and "(4, 1, 3, 7, 7)" in str(err.value)


@pytest.mark.parametrize("content", [b"this is not a checkpoint\n", "truncated", None])
def test_unreadable_files_are_named(small_files, tmp_path, content):
    _, _, _, cover_path, clip_path = small_files
    bad = tmp_path / "bad.pt"
    if content == "truncated":
        data = cover_path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif content is not None:
        bad.write_bytes(content)
    for args in ((bad, clip_path), (cover_path, bad)):
        with pytest.raises(WeightsError) as err:
            load_model(SMALL, *args)
        assert str(bad) in str(err.value)
    for loader in (load_cover_checkpoint, load_clip_archive):
        with pytest.raises(WeightsError, match="bad.pt"):
            loader(bad)


# ----------------------------------------------------------------------------- untrusted files

class Payload:
    """A scripted class whose ``__setstate__`` creates a file: torch.jit.load runs it."""

    def __init__(self, path: str):
        self.path = path

    def __getstate__(self) -> str:
        return self.path

    def __setstate__(self, state: str) -> None:
        t = torch.from_file(state, shared=True, size=16)  # creates (or overwrites) the file
        self.path = state + str(t.numel())


@functools.cache
def _scripted_payload():
    with warnings.catch_warnings():  # TorchScript is deprecated; the archives it made are not
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(Payload)


def _script_archive(clip: dict, target, path):
    """A TorchScript archive with OpenAI's key names and, beside them, a hostile payload."""

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.payload = _scripted_payload()(str(target))
            self.visual = visual_modules(clip)

        def forward(self, x):
            return x

    torch.jit.save(torch.jit.script(Holder()), str(path))
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_setstate_is_never_run(small_files, tmp_path):
    _, _, clip, cover_path, _ = small_files
    target = tmp_path / "created-by-the-archive"
    archive = _script_archive(clip, target, tmp_path / "hostile.pt")
    loaded = load_model(SMALL, cover_path, archive)  # the tensors are read as data ...
    assert not target.exists()                        # ... and the payload never ran
    want = {k: v for k, v in clip.items() if k.startswith(CLIP_PREFIX)}
    got = load_clip_archive(archive)
    assert want.keys() <= got.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not target.exists()
    assert loaded.semantic_backbone.proj.dtype == torch.float32
    torch.jit.load(str(archive))                      # control: the archive really is hostile
    assert target.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_payload_without_weights_is_refused_naming_the_file(small_files, tmp_path):
    _, _, _, cover_path, _ = small_files
    target = tmp_path / "created-by-the-archive"
    archive = _script_archive({}, target, tmp_path / "payload-only.pt")
    with pytest.raises(WeightsError, match="missing") as err:
        load_model(SMALL, cover_path, archive)
    assert str(archive) in str(err.value)
    assert not target.exists()


class _Reduce:
    """Pickles as ``GLOBAL func`` + ``REDUCE args``: what a hand-made hostile pickle does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_calls(target):
    import os
    return {"open": _Reduce(open, str(target), "w"),
            "os.system": _Reduce(os.system, f"touch {target}"),
            "torch.from_file": _Reduce(torch.from_file, str(target), True, 4)}


def _torchscript_zip(path, data_pkl: bytes):
    """A zip laid out as torch.jit.save writes it, with this ``data.pkl``."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("call", ["open", "os.system", "torch.from_file"])
def test_pickle_globals_in_a_torchscript_archive_are_refused(tmp_path, call):
    target = tmp_path / "created"
    payload = {"visual.proj": _hostile_calls(target)[call]}
    archive = _torchscript_zip(tmp_path / "evil.pt", pickle.dumps(payload, protocol=2))
    with pytest.raises(WeightsError) as err:
        load_clip_archive(archive)
    message = str(err.value)
    assert str(archive) in message and "refers to" in message and "\n" not in message
    assert not target.exists()
    pickle.loads(pickle.dumps(payload, protocol=2))  # control: plain unpickling runs the call
    assert target.exists()


@pytest.mark.parametrize("call", ["open", "os.system", "torch.from_file"])
def test_pickle_globals_in_a_checkpoint_are_refused(tmp_path, call):
    target = tmp_path / "created"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": _hostile_calls(target)[call]}}, path)
    for loader in (load_cover_checkpoint, load_clip_archive):
        with pytest.raises(WeightsError) as err:
            loader(path)
        assert str(path) in str(err.value)
        assert not target.exists()


def _tensor_archive(path, size, stride, numel, stored_bytes, *, tag="storage",
                    compress=None, record=True):
    """A TorchScript-layout zip whose ``data.pkl`` holds one fp16 tensor ``visual.proj``
    made of the given size/stride over a storage of ``numel`` elements (``stored_bytes`` on disk)."""
    import collections
    import zipfile

    marker = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return (tag, torch.HalfStorage, "0", "cpu", numel) if obj is marker else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"visual.proj": _Reduce(
        torch._utils._rebuild_tensor_v2, marker, 0, size, stride, False, collections.OrderedDict())})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        if record:
            data = torch.arange(stored_bytes // 2, dtype=torch.half).numpy().tobytes()
            z.writestr("archive/data/0", data + b"\0" * (stored_bytes % 2),
                       compress_type=compress or zipfile.ZIP_STORED)
    return path


def test_handmade_archive_is_read(tmp_path):
    """The helper below makes valid archives: a strided view over a shared storage."""
    path = _tensor_archive(tmp_path / "ok.pt", (3, 2), (1, 4), 16, 32)
    got = load_clip_archive(path)["visual.proj"]
    assert torch.equal(got, torch.arange(16, dtype=torch.half).as_strided((3, 2), (1, 4)))


@pytest.mark.parametrize("case,why", [
    ("out of bounds", "reaches past its storage"),
    ("negative stride", "malformed offset, size or stride"),
    ("short storage", "holds 30 bytes"),
    ("compressed storage", "compressed, not stored"),
    ("missing storage", "is missing"),
    ("unknown persistent id", "unsupported persistent id"),
])
def test_malformed_archive_tensors_are_refused(tmp_path, case, why):
    """Storage records are checked before any tensor is made from them."""
    import zipfile

    path = tmp_path / "bad.pt"
    args = {"out of bounds": ((1000,), (1,), 16, 32), "negative stride": ((4,), (-1,), 16, 32),
            "short storage": ((4,), (1,), 16, 30)}.get(case, ((4,), (1,), 16, 32))
    _tensor_archive(path, *args, tag="sturage" if case == "unknown persistent id" else "storage",
                    compress=zipfile.ZIP_DEFLATED if case == "compressed storage" else None,
                    record=case != "missing storage")
    with pytest.raises(WeightsError, match=why) as err:
        load_clip_archive(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("which,key,value,why", [
    ("cover", "technical_backbone.patch_embed.proj.bias", float("nan"), "non-finite"),
    ("cover", "smtc_gate_aesc.out_project_y.bias", float("inf"), "non-finite"),
    ("clip", "visual.proj", float("-inf"), "non-finite"),
    ("cover", "technical_head.fc_hid.weight", "int", "not floating point"),
    ("clip", "visual.ln_post.weight", "bool", "not floating point"),
    ("cover", "technical_backbone.layers.0.blocks.0.attn.relative_position_index", "index",
     "relative position index"),
    ("cover", "technical_backbone.layers.1.blocks.0.attn.relative_position_index", "float",
     "relative position index"),
])
def test_bad_tensor_values_are_refused_naming_the_tensor(small_files, tmp_path, which, key, value,
                                                         why):
    _, cover, clip, cover_path, clip_path = small_files
    files = {"cover": cover, "clip": clip}
    assert key in files[which], key
    t = files[which][key].clone()
    if value == "int":
        t = t.long()
    elif value == "bool":
        t = t > 0
    elif value == "index":
        t = t.clone()
        t[0, 0] = 10 ** 6  # would index far outside the bias table
    elif value == "float":
        t = t.float()
    else:
        t.view(-1)[0] = value
    files[which][key] = t
    path = tmp_path / f"bad_{which}.pt"
    torch.save({"state_dict": cover} if which == "cover" else clip, path)
    args = (path, clip_path) if which == "cover" else (cover_path, path)
    with pytest.raises(WeightsError, match=why) as err:
        load_model(SMALL, *args)
    assert key in str(err.value) and str(path) in str(err.value)
