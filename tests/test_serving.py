"""The registered model as a pyfunc: in process, through `predict`, and behind `mlflow models serve`
on a machine without PyTorch."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from ruamel.yaml import YAML

from pipeline.core.classes import PERSON, ClassSpec
from pipeline.core.errors import ModelError
from pipeline.core.files import sha256_file
from pipeline.core.images import decode_image
from pipeline.serve.predict import load_segmenter
from pipeline.serve.pyfunc import BadPayload, read_image, request_images
from pipeline.serve.segmenter import soft_masks
from pipeline.serve.settings import InferenceSettings
from pipeline.serve.torch_backend import TorchSegmenter, load_predictor
from tests.helpers.modelstore import NAME, register, tiny_checkpoint, tiny_onnx, use_store
from tests.helpers.project import PROJECT_ROOT
from tests.helpers.serving import post, served

THRESHOLD = 0.45
CHAMPION_URI = f"models:/{NAME}@champion"


def read_images(payload) -> tuple[list[np.ndarray], bool]:
    items, encoded = request_images(payload)
    return [read_image(item, index, encoded) for index, item in enumerate(items)], encoded


@pytest.fixture(scope="module")
def store(module_folder):
    """A store whose champion is a tiny random-weight model registered with threshold 0.45 and TTA."""
    root = module_folder("store")
    checkpoint = tiny_checkpoint(root / "best.pt")
    register(root, checkpoint, threshold=THRESHOLD, tta=True)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    return root, checkpoint


@pytest.fixture(scope="module")
def photo(shared_zip) -> bytes:
    with zipfile.ZipFile(shared_zip) as archive:
        name = next(n for n in sorted(archive.namelist()) if n.lower().endswith(".jpg"))
        return archive.read(name)


@pytest.fixture
def reference(store) -> TorchSegmenter:
    """What the served model must answer: the checkpoint applied with the registered settings."""
    return TorchSegmenter.load(store[1], InferenceSettings(THRESHOLD, True, ""), "cpu")


def test_pyfunc_returns_masks_for_encoded_images_and_pixel_arrays(store, photo, reference):
    use_store(store[0])
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    image = decode_image(photo, "photo")
    encoded = model.predict(pd.DataFrame({"image": [base64.b64encode(photo).decode()]}))
    mask = decode_image(base64.b64decode(encoded[0]), "answer")[:, :, 0]
    assert mask.shape == image.shape[:2]
    assert np.array_equal(mask, reference.masks([image])[0])
    small = np.random.default_rng(0).integers(0, 256, (3, 40, 72, 3)).astype(np.float64)
    masks = model.predict(small)
    assert [m.shape for m in masks] == [(40, 72)] * 3 and set(np.unique(masks)) <= {0, 255}


def test_predict_uses_the_registered_threshold_and_tta(store):
    use_store(store[0])
    os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    try:
        predictor = load_predictor(CHAMPION_URI, threshold=None, device="cpu")
        assert (predictor.threshold, predictor.tta) == (THRESHOLD, True)
        assert load_predictor(CHAMPION_URI, threshold=0.3, device="cpu").threshold == 0.3
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def test_predict_backends_load_the_registered_onnx_file_or_checkpoint_and_agree(store, photo):
    use_store(store[0])
    os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    try:
        default = load_segmenter(CHAMPION_URI, threshold=None, device="cpu")
        torch_backend = load_segmenter(CHAMPION_URI, threshold=None, device="cpu", backend="torch")
        overridden = load_segmenter(CHAMPION_URI, threshold=0.3, device="cpu", backend="onnxruntime")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert (default.backend, default.threshold, default.tta) == ("onnxruntime", THRESHOLD, True)
    assert (torch_backend.backend, torch_backend.threshold, torch_backend.tta) == ("torch", THRESHOLD, True)
    assert overridden.threshold == 0.3
    image = decode_image(photo, "photo")
    assert np.mean(default.masks([image])[0] == torch_backend.masks([image])[0]) >= 0.999


def test_predict_uses_an_onnx_file_beside_a_checkpoint_only_if_exported_from_it(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    settings = InferenceSettings(0.4, False, sha256_file(checkpoint))
    tiny_onnx(checkpoint, settings, tmp_path / "model.onnx")
    assert load_segmenter(str(checkpoint), threshold=None, device="cpu").backend == "onnxruntime"
    assert load_segmenter(str(tmp_path / "model.onnx"), threshold=None, device="cpu").threshold == 0.4
    tiny_checkpoint(checkpoint, seed=1)  # retrained: the export is stale
    assert load_segmenter(str(checkpoint), threshold=None, device="cpu").backend == "torch"
    assert "model.onnx was exported from another checkpoint" in capsys.readouterr().out
    with pytest.raises(ModelError, match="exported from another checkpoint.*or use --backend torch"):
        load_segmenter(str(checkpoint), threshold=None, device="cpu", backend="onnxruntime")
    with pytest.raises(ModelError, match="an ONNX file runs with --backend onnxruntime"):
        load_segmenter(str(tmp_path / "model.onnx"), threshold=None, device="cpu", backend="torch")


def test_soft_masks_are_probabilities_times_255_per_foreground_class():
    binary = soft_masks(np.array([[0.0, 0.5], [0.999, 1.0]]), PERSON)
    assert list(binary) == ["_probability"] and binary["_probability"].tolist() == [[0, 128], [255, 255]]
    three = ClassSpec.of(["background", "cat", "dog"], None)
    probabilities = np.stack([np.full((2, 2), 0.2), np.full((2, 2), 0.3), np.full((2, 2), 0.5)], axis=2)
    masks = soft_masks(probabilities, three)
    assert list(masks) == ["_probability_cat", "_probability_dog"]
    assert masks["_probability_cat"].max() == 76 and masks["_probability_dog"].min() == 128


def test_pytorch_takes_its_settings_from_the_onnx_export_of_that_very_checkpoint(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    assert load_predictor(str(checkpoint), threshold=None, device="cpu").threshold == 0.5
    assert "no ONNX export beside" in capsys.readouterr().out
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    tiny_onnx(other, InferenceSettings(0.35, True, sha256_file(other)), tmp_path / "model.onnx")
    assert load_predictor(str(checkpoint), threshold=None, device="cpu").threshold == 0.5
    assert "model.onnx was exported from another checkpoint" in capsys.readouterr().out
    tiny_onnx(checkpoint, InferenceSettings(0.35, True, sha256_file(checkpoint)), tmp_path / "model.onnx")
    predictor = load_predictor(str(checkpoint), threshold=None, device="cpu")
    assert (predictor.threshold, predictor.tta) == (0.35, True)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (np.array(["not base64!"]), "image 0: not valid base64"),
        (np.array([base64.b64encode(b"plain text").decode()]), "image 0: cannot be decoded as an image"),
        (pd.DataFrame({"photo": ["x"]}), "expected a column 'image'"),
        (np.zeros((2, 8, 8, 2)), "image 0: expected 1, 3 or 4 channels, got 2"),
        (np.full((1, 8, 8, 3), 300.0), "image 0: pixel values must lie in 0-255"),
        (np.zeros((4, 4)), "expected a batch of images"),
        (["aGk=", np.zeros((4, 4, 3))], "mix of encoded images and pixel arrays"),
        (np.array([], dtype=str), "the request holds no images"),
    ],
)
def test_bad_payloads_are_rejected_with_a_clear_message(payload, message):
    with pytest.raises(BadPayload, match=message) as caught:
        read_images(payload)
    assert caught.value.get_http_status_code() == 400


def test_grayscale_and_rgba_arrays_become_rgb():
    images, encoded = read_images([np.zeros((5, 6)), np.zeros((5, 6, 4))])
    assert not encoded and [image.shape for image in images] == [(5, 6, 3), (5, 6, 3)]


@pytest.fixture
def server(store, tmp_path):
    """`mlflow models serve` of the champion on a free loopback port."""
    with served(CHAMPION_URI, f"sqlite:///{store[0] / 'mlflow.db'}", tmp_path / "server.log") as (base, _):
        yield base


def test_registered_version_serves_the_onnx_file_and_needs_no_torch(store):
    use_store(store[0])
    local = Path(mlflow.artifacts.download_artifacts(f"{CHAMPION_URI}/MLmodel"))
    artifacts = YAML(typ="safe", pure=True).load(local.read_text())["flavors"]["python_function"]["artifacts"]
    assert artifacts["onnx"]["path"].endswith(".onnx")
    requirements = (local.parent / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "mlflow" in requirements
    assert not {"torch", "segmentation-models-pytorch", "timm"} & {line.split("==")[0] for line in requirements.split()}


def test_served_model_answers_invocations_and_rejects_bad_payloads(server, photo, reference):
    status, answer = post(f"{server}/invocations", {"inputs": [base64.b64encode(photo).decode()]})
    assert status == 200, answer
    mask = decode_image(base64.b64decode(answer["predictions"][0]), "answer")[:, :, 0]
    assert np.array_equal(mask, reference.masks([decode_image(photo, "photo")])[0])

    status, answer = post(f"{server}/invocations", {"inputs": np.zeros((1, 33, 47, 3)).tolist()})
    assert status == 200 and np.asarray(answer["predictions"]).shape == (1, 33, 47)

    status, answer = post(f"{server}/invocations", {"inputs": ["not base64!"]})
    assert status == 400 and "image 0: not valid base64" in answer["message"]
    status, answer = post(f"{server}/invocations", {"dataframe_split": {"columns": ["photo"], "data": [["x"]]}})
    assert status == 400 and "expected a column 'image'" in answer["message"]
    status, answer = post(f"{server}/invocations", {"something": 1})
    assert status == 400


def test_one_exported_file_gives_one_answer_served_predicted_and_in_the_example_client(server, store, photo, tmp_path):
    """The registered ONNX file's metadata (threshold 0.45, TTA) decides for every consumer: the
    served model, predict with either backend (registered, or local files) and the example client."""
    root, checkpoint = store
    local = tmp_path / "models"
    local.mkdir()
    shutil.copy(checkpoint, local / "best.pt")
    shutil.copy(root / f"{checkpoint.stem}.onnx", local / "model.onnx")
    image = decode_image(photo, "photo")
    status, answer = post(f"{server}/invocations", {"inputs": [base64.b64encode(photo).decode()]})
    assert status == 200, answer
    answers = {"served": decode_image(base64.b64decode(answer["predictions"][0]), "answer")[:, :, 0]}
    use_store(root)
    os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    try:
        for backend in ("onnxruntime", "torch"):
            segmenter = load_segmenter(CHAMPION_URI, threshold=None, device="cpu", backend=backend)
            answers[f"registered, {backend}"] = segmenter.masks([image])[0]
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    answers["local checkpoint, torch"] = load_segmenter(
        str(local / "best.pt"), threshold=None, device="cpu", backend="torch"
    ).masks([image])[0]
    answers["local onnx file"] = load_segmenter(str(local / "model.onnx"), threshold=None, device="cpu").masks([image])[
        0
    ]
    (tmp_path / "photo.jpg").write_bytes(photo)
    subprocess.run(
        [sys.executable, "examples/onnx_client.py", str(local / "model.onnx"), str(tmp_path / "photo.jpg")]
        + ["--out", str(tmp_path / "client.png")],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        check=True,
        capture_output=True,
    )
    answers["example client"] = cv2.imread(str(tmp_path / "client.png"), cv2.IMREAD_UNCHANGED)
    served = answers["served"]
    for name, mask in answers.items():
        assert mask.shape == served.shape, name
        # onnxruntime answers are identical; PyTorch differs only in float rounding at the cut-off.
        agreement = np.mean(mask == served)
        assert agreement == 1.0 if "torch" not in name else agreement >= 0.999, (name, agreement)
    untuned = TorchSegmenter.load(checkpoint, device="cpu").masks([image])[0]  # threshold 0.5, no TTA
    assert not np.array_equal(untuned, served)


def test_registering_leaves_mlflow_nothing_to_warn_about(tmp_path, recwarn, caplog):
    """predict's annotation and the stated signature: no "Add type hints" or signature warnings."""
    register(tmp_path, tiny_checkpoint(tmp_path / "best.pt"), threshold=0.5)
    said = [str(warning.message) for warning in recwarn]
    said += [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert not [text for text in said if re.search("type hint|signature|input example", text, re.IGNORECASE)], said
