"""`model.encoder_weights: <file>`: a local state dict, verified and copied by fetch, loaded by train."""

from __future__ import annotations

import hashlib
import json
import re

import mlflow
import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from pipeline.core.classes import PERSON
from pipeline.core.config import parse_config
from pipeline.core.errors import ModelError
from pipeline.fetch.encoder_weights import fetch_pretrained_encoder
from pipeline.model.network import build_model, load_pretrained_encoder
from tests.helpers.project import STAGES, copy_project, load_params, repro, run, tiny_params, write_params


def encoder_state(name: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return smp.encoders.get_encoder(name, in_channels=3, weights=None).state_dict()


def model_config(params: dict, weights: str | None, encoder: str = "resnet18"):
    params["model"].update(encoder=encoder, encoder_weights=weights)
    return parse_config(params).model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_file_is_verified_copied_and_loaded_with_its_digest(params, tmp_path, monkeypatch, suffix):
    state = encoder_state(seed=1)
    (tmp_path / "weights").mkdir()
    path = tmp_path / "weights" / f"encoder{suffix}"
    if suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        torch.save(state, path)
    monkeypatch.chdir(tmp_path)  # stages run in the project folder: relative paths are relative to it
    cfg = model_config(params, f"weights/encoder{suffix}")
    fetch_pretrained_encoder(cfg, tmp_path / "pretrained")

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = json.loads((tmp_path / "pretrained" / "info.json").read_text())
    assert info == {"encoder": "resnet18", "encoder_weights": f"weights/encoder{suffix}", "sha256": digest}
    model = build_model(cfg, PERSON)
    assert load_pretrained_encoder(model, cfg, tmp_path / "pretrained") == digest
    loaded = model.encoder.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_a_missing_file_names_the_key_and_the_path(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as caught:
        fetch_pretrained_encoder(model_config(params, "weights/absent.pth"), tmp_path / "pretrained")
    message = str(caught.value)
    assert "model.encoder_weights: weights/absent.pth does not exist" in message
    assert str(tmp_path / "weights" / "absent.pth") in message and "\n" not in message
    assert not (tmp_path / "pretrained").exists()


def test_a_file_for_another_architecture_is_refused_naming_the_keys(params, tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(encoder_state("resnet34"), path)
    with pytest.raises(ModelError) as caught:
        fetch_pretrained_encoder(model_config(params, str(path)), tmp_path / "pretrained")
    message = str(caught.value)
    # resnet34 has three blocks in layer1 where resnet18 has two.
    assert re.search(r"unexpected \d+: layer1\.2\.conv1\.weight", message), message
    assert "missing" not in message and "model.encoder=resnet18" in message and "\n" not in message


def test_a_shape_mismatch_and_a_missing_key_are_named(params, tmp_path):
    state = encoder_state()
    state["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    del state["layer4.1.bn2.bias"]
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(ModelError) as caught:
        fetch_pretrained_encoder(model_config(params, str(path)), tmp_path / "pretrained")
    message = str(caught.value)
    assert "missing 1: layer4.1.bn2.bias" in message
    assert "shape mismatches 1: conv1.weight (64, 4, 7, 7) != (64, 3, 7, 7)" in message


def test_a_file_that_is_not_a_state_dict_is_refused(params, tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"not a weights file")
    with pytest.raises(ModelError, match=r"model.encoder_weights: .*garbage.safetensors: cannot read a state dict"):
        fetch_pretrained_encoder(model_config(params, str(path)), tmp_path / "pretrained")


@pytest.mark.e2e
def test_dvc_repro_trains_from_a_local_file_and_records_its_digest(tmp_path):
    root = copy_project(tmp_path / "project")
    weights = root / "weights" / "resnet18.pth"
    torch.save(encoder_state(seed=2), weights)
    params = tiny_params(load_params(root / "params.yaml"), "synthetic:48")
    params["data"]["manifest"] = None
    params["model"]["encoder_weights"] = "weights/resnet18.pth"
    params["train"]["epochs"] = 1
    write_params(root / "params.yaml", params)
    assert repro(root) == set(STAGES)

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads((root / "models" / "pretrained" / "info.json").read_text())["sha256"] == digest
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    assert mlflow.MlflowClient().get_run(run_id).data.tags["encoder_weights_sha256"] == digest
    assert f"`weights/resnet18.pth`, SHA-256 `{digest}`" in (root / "models" / "model_card.md").read_text()

    # The file's content is a dependency of fetch, not only its path in params.yaml.
    torch.save(encoder_state(seed=3), weights)
    status = run(root, "dvc", "status", check=True).stdout
    assert re.findall(r"^(\w+):$", status, flags=re.MULTILINE) == ["fetch"], status
