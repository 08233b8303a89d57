"""The commands around a head file: ``cover-train`` writes it, ``cover-export --head`` bakes it
into ONNX graphs (equal to the torch model with the head within 1e-4) and names it in the
manifest, ``cover-run``/``cover-eval --head`` score with it and refuse engines without it."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cover_engine.export.backend_torch import TorchBackend, build_model
from cover_engine.export.train.headfile import read_head, save_head
from cover_engine.runtime.cli.eval import main as eval_main
from cover_engine.runtime.cli.export import main as export_main
from cover_engine.runtime.cli.run import main as run_main
from cover_engine.runtime.cli.train import main as train_main
from cover_engine.runtime.constants import BRANCHES
from cover_engine.runtime.engines.cache import engine_cache_name
from cover_engine.runtime.engines.manifest import load_manifest, validate_manifest
from cover_engine.runtime.engines.ort_runner import OrtBackend
from cover_engine.runtime.eval.labels import read_labels
from cover_engine.runtime.views.assemble import load_views

pytestmark = pytest.mark.vectors

TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_args(vectors_dir):
    d = vectors_dir / "model"
    return ["--config", str(d / "config.json"), "--weights", str(d / "cover.pth"),
            "--clip-weights", str(d / "clip.pt")]


def build(model_args, head=None):
    return build_model(model_args[1], weights=model_args[3], clip_weights=model_args[5],
                       head=head, log=lambda m: None)


@pytest.fixture(scope="module")
def trained(blur_set, model_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "head.pth"
    result = CliRunner().invoke(train_main, [
        "--labels", str(blur_set.labels), "--root", str(blur_set.root), "--out", str(out),
        "--cache", str(blur_set.cache), "--epochs", "3", "--val-split", "0.25", *model_args])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def exported(trained, model_args, tmp_path_factory):
    head, _ = trained
    out = tmp_path_factory.mktemp("export") / "with-head"
    result = CliRunner().invoke(export_main, ["--no-images", "--no-check", "--out", str(out),
                                              "--head", str(head), *model_args])
    assert result.exit_code == 0, result.output
    return out


def test_cover_train_reports_progress_and_writes_the_head(trained):
    out, output = trained
    assert "features of" in output and "feature cache" in output
    assert [line.split()[1] for line in output.splitlines() if line.startswith("epoch ")] == \
        ["1/3", "2/3", "3/3"]
    assert all("raw SROCC" in line and "ema SROCC" in line
               for line in output.splitlines() if line.startswith("epoch "))
    assert "before training SROCC" in output and f"wrote {out}" in output
    assert read_head(out).provenance["training"]["epochs"] == 3


def test_cover_train_bad_input_is_one_line(blur_set, model_args, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i.name},-1,-1,2.5\n" for i in read_labels(blur_set.labels)[:12]))
    out = tmp_path / "head.pth"
    result = CliRunner().invoke(train_main, ["--labels", str(labels), "--root", str(blur_set.root),
                                             "--out", str(out), *model_args])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "constant MOS" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_exported_graphs_with_head_equal_torch_with_head(exported, trained, model_args, blur_set):
    head, _ = trained
    with_head, cfg = build(model_args, head)
    base, _ = build(model_args)
    torch_head = TorchBackend(model=with_head, config=cfg)
    torch_base = TorchBackend(model=base, config=cfg)
    ort = OrtBackend(exported)
    for item in read_labels(blur_set.held)[:3]:
        views, _ = load_views(blur_set.root / item.name, torch_head.specs)
        want, got, old = torch_head.run(views), ort.run(views), torch_base.run(views)
        for b in BRANCHES:
            assert float(np.abs(got[b] - want[b]).max()) <= TOL, b
        # and the head really changed the model (the check above could not pass by accident)
        assert max(float(np.abs(old[b] - want[b]).max()) for b in BRANCHES) > 1e-2


def test_manifest_names_the_head_file_and_its_hash(exported, trained):
    head, _ = trained
    manifest = load_manifest(exported)
    assert manifest.head["file"] == "head.pth"
    assert manifest.head["sha256"] == hashlib.sha256(head.read_bytes()).hexdigest()
    assert manifest.head["trained"] == "heads"
    provenance = read_head(head).provenance
    assert manifest.head["labels_sha256"] == provenance["labels"]["sha256"]
    assert manifest.head["validation"] == provenance["metrics"]["after"]
    data = json.loads((exported / "manifest.json").read_text())
    assert validate_manifest(data) == []
    data["head"]["sha256"] = "not a digest"
    assert validate_manifest(data)


def other_head(trained, tmp_path):
    head = read_head(trained[0])
    tensors = dict(head.tensors)
    tensors["semantic_head.fc_last.bias"] = tensors["semantic_head.fc_last.bias"] + 1.0
    path = tmp_path / "other.pth"
    save_head(path, tensors, head.provenance, (0.0, 0.0, 0.0, 0.0))
    return path


def test_cover_run_and_eval_use_the_head(exported, trained, model_args, blur_set, tmp_path):
    head, _ = trained
    video = str(blur_set.root / read_labels(blur_set.held)[0].name)
    runner = CliRunner()  # click 8.2+: result.stdout without the notes on stderr
    ort = runner.invoke(run_main, [video, "--engines", str(exported), "--head", str(head), "--json"])
    assert ort.exit_code == 0, ort.output
    by_torch = runner.invoke(run_main, [video, "--backend", "torch", "--head", str(head), "--json",
                                        *model_args])
    assert by_torch.exit_code == 0, by_torch.output
    a = json.loads(ort.stdout.strip().splitlines()[-1])
    b = json.loads(by_torch.stdout.strip().splitlines()[-1])
    for k in BRANCHES + ("overall",):
        assert a[k] == pytest.approx(b[k], abs=TOL)
    # engines that carry another head (or none) are refused, in one line
    wrong = runner.invoke(run_main, [video, "--engines", str(exported),
                                     "--head", str(other_head(trained, tmp_path))])
    assert wrong.exit_code == 1
    assert "carry head head.pth" in wrong.output and "re-export" in wrong.output
    csv = tmp_path / "eval.csv"
    ev = runner.invoke(eval_main, ["--labels", str(blur_set.held), "--root", str(blur_set.root),
                                   "--engines", str(exported), "--head", str(head),
                                   "--limit", "4", "--csv", str(csv)])
    assert ev.exit_code == 0, ev.output
    assert len(csv.read_text().splitlines()) == 5


def test_cover_export_refuses_a_head_from_other_weights(trained, model_args, tmp_path):
    head = read_head(trained[0])
    p = json.loads(json.dumps(head.provenance))
    p["base"]["weights"]["clip"]["sha256"] = "f" * 64
    foreign = tmp_path / "foreign.pth"
    save_head(foreign, head.tensors, p, (0.0, 0.0, 0.0, 0.0))
    result = CliRunner().invoke(export_main, ["--no-images", "--no-check", "--out",
                                              str(tmp_path / "x"), "--head", str(foreign),
                                              *model_args])
    assert result.exit_code == 1
    assert "trained on other CLIP weights" in result.output
    assert result.output.count("\n") == 1 + result.output.count("[1/")  # progress, then the error
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_cached_export_name_depends_on_the_head(trained, tmp_path):
    head = trained[0]
    plain = engine_cache_name(config={"a": 1})
    named = engine_cache_name(config={"a": 1},
                              head_sha256=hashlib.sha256(head.read_bytes()).hexdigest())
    assert plain != named and "-head-" in named
    shutil.copy(head, tmp_path / "copy.pth")  # the same bytes elsewhere: the same export
    assert named == engine_cache_name(
        config={"a": 1}, head_sha256=hashlib.sha256((tmp_path / "copy.pth").read_bytes()).hexdigest())


def test_model_identity_names_the_head(exported, trained, model_args):
    """Calibrations and reference distributions are keyed by the model's identity: scores made
    with a head are another model's than the base weights'."""
    from cover_engine.runtime.model_identity import identity_from_options, identity_of_backend

    head, _ = trained
    digest = hashlib.sha256(head.read_bytes()).hexdigest()
    opts = dict(config=model_args[1], weights=model_args[3], clip_weights=model_args[5])
    plain = identity_from_options(**opts)
    with_head = identity_from_options(**opts, head=head)
    assert plain.head is None and with_head.head == {"file": "head.pth", "sha256": digest}
    assert "another head" in plain.mismatch(with_head)
    from_engines = identity_of_backend(OrtBackend(exported))
    assert from_engines.mismatch(with_head) is None
    assert identity_from_options(engines=exported).mismatch(with_head) is None
