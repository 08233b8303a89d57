"""Weight loading: official key names and shapes, strict checks, clear errors on bad files."""
from __future__ import annotations

import json
import subprocess
import sys

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
            self.visual = torch.nn.Module()
            for key, t in clip.items():
                if key.startswith(CLIP_PREFIX):
                    *path, leaf = key[len(CLIP_PREFIX):].split(".")
                    mod = self.visual
                    for part in path:
                        if not hasattr(mod, part):
                            mod.add_module(part, torch.nn.Module())
                        mod = getattr(mod, part)
                    mod.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))

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
