"""Hostile input to predict and the served model: outputs that would replace inputs, pixel values
that are not pixels, bodies too large or too slow to answer, an unreachable registry and foreign
checkpoints. Each ends in one short line and an exit code or HTTP status, with nothing lost."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from pipeline.__main__ import main as cli
from pipeline.core.errors import ModelError
from pipeline.core.files import sha256_file
from pipeline.model.checkpoint import load_model
from pipeline.serve import pyfunc
from pipeline.serve.pyfunc import BadPayload, SegmentationModel, bounded, shortened
from pipeline.serve.settings import InferenceSettings
from pipeline.serve.torch_backend import TorchSegmenter
from tests.helpers.modelstore import NAME, register, tiny_checkpoint
from tests.helpers.serving import model_processes, served


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def png_photos(folder: Path, count: int = 3, size: int = 24) -> dict[Path, str]:
    """``count`` PNG photos in ``folder``; returns each file's SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:03d}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return {path: sha256_file(path) for path in sorted(folder.iterdir())}


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links as links) with its content's digest."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(root))] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[str(path.relative_to(root))] = sha256_file(path)
    return found


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "model" / "best.pt")


# --- predict never replaces an input ---------------------------------------------------------


@pytest.mark.parametrize("case", ["same folder", "same folder with ..", "link to it", "files one by one"])
def test_predict_refuses_an_out_folder_whose_names_meet_its_inputs(tmp_path: Path, checkpoint: Path, capsys, case):
    photos = tmp_path / "photos"
    digests = png_photos(photos / "sub")
    (tmp_path / "link").symlink_to(photos / "sub")
    inputs, out = {
        "same folder": ([photos / "sub"], photos / "sub"),
        "same folder with ..": ([photos], photos / "sub" / ".." / "sub"),
        "link to it": ([photos / "sub"], tmp_path / "link"),
        "files one by one": ([photos / "sub" / "001.png"], photos / "sub"),
    }[case]
    before = tree(tmp_path)
    capsys.readouterr()
    assert cli(["predict", *map(str, inputs), "--model", str(checkpoint), "--out", str(out)]) == 2
    (error,) = [line for line in error_lines(capsys) if line.startswith("error:")]
    first = "001.png" if case == "files one by one" else "000.png"
    assert f"would replace the input file {photos / 'sub' / first}" in error, error
    assert "nothing was written" in error and len(error) - len(str(out)) - len(str(photos / "sub" / first)) < 200
    assert tree(tmp_path) == before
    assert {path: sha256_file(path) for path in digests} == digests


def test_predict_refuses_outputs_that_are_links_to_inputs_or_the_same_file(tmp_path: Path, checkpoint: Path, capsys):
    photos = tmp_path / "photos"
    png_photos(photos, count=2)
    for kind in ("symlink", "hard link"):
        out = tmp_path / kind.replace(" ", "-")
        out.mkdir()
        if kind == "symlink":
            (out / "001.png").symlink_to(photos / "001.png")
        else:
            os.link(photos / "001.png", out / "001.png")
        before = tree(tmp_path)
        capsys.readouterr()
        assert cli(["predict", str(photos), "--model", str(checkpoint), "--out", str(out)]) == 2, kind
        (error,) = [line for line in error_lines(capsys) if line.startswith("error:")]
        assert f"error: --out {out}: its 001.png would replace the input file {photos / '001.png'};" in error, error
        assert tree(tmp_path) == before, kind


def test_predict_names_the_count_of_inputs_it_would_replace(tmp_path: Path, checkpoint: Path, capsys):
    photos = tmp_path / "photos"
    png_photos(photos, count=5)
    assert cli(["predict", str(photos), "--model", str(checkpoint), "--out", str(photos), "--overlay"]) == 2
    (error,) = [line for line in error_lines(capsys) if line.startswith("error:")]
    assert error.endswith(
        "(and 4 more input files); nothing was written: choose an --out folder that holds no input images"
    )


def test_predict_into_a_new_folder_inside_the_inputs_writes_masks_and_keeps_the_photos(
    tmp_path: Path, checkpoint: Path
):
    photos = tmp_path / "photos"
    digests = png_photos(photos)
    assert cli(["predict", str(photos), "--model", str(checkpoint), "--out", str(photos / "masks")]) == 0
    assert sorted(p.name for p in (photos / "masks").iterdir()) == ["000.png", "001.png", "002.png"]
    assert cv2.imread(str(photos / "masks" / "000.png"), cv2.IMREAD_UNCHANGED).ndim == 2  # a mask, not a photo
    assert {path: sha256_file(path) for path in digests} == digests


# --- checkpoints ------------------------------------------------------------------------------


def test_foreign_weights_are_refused_naming_the_first_few_and_the_count(tmp_path: Path, checkpoint: Path):
    payload = torch.load(checkpoint, weights_only=True)
    count = len(payload["state_dict"])
    payload["state_dict"] = {f"module.{key}": value for key, value in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "parallel.pt")
    with pytest.raises(ModelError) as raised:
        load_model(tmp_path / "parallel.pt")
    message = str(raised.value)
    assert "\n" not in message and len(message) < 600, len(message)
    assert f"{count} of the model's {count} tensors missing (encoder.conv1.weight, " in message
    assert f"{count} of its {count} tensors unknown to the model (module.encoder.conv1.weight, " in message
    assert message.endswith("use a checkpoint written by the train stage")


def test_weights_of_another_shape_are_refused_naming_one(tmp_path: Path, checkpoint: Path):
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"]["encoder.conv1.weight"] = torch.zeros(2, 3, 7, 7)
    torch.save(payload, tmp_path / "reshaped.pt")
    with pytest.raises(ModelError, match=r"1 tensors of another shape \(encoder\.conv1\.weight: \(2, 3, 7, 7\), "):
        load_model(tmp_path / "reshaped.pt")


class Foreign:
    """A class only a full unpickler would rebuild."""


def test_a_pickled_object_is_refused_in_one_line(tmp_path: Path):
    torch.save({"model": Foreign()}, tmp_path / "pickled.pt")
    with pytest.raises(ModelError) as raised:
        load_model(tmp_path / "pickled.pt")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'pickled.pt'}: not a readable checkpoint (UnpicklingError: ")
    assert "\n" not in message and len(message) < 400, message


# --- an unreachable registry ------------------------------------------------------------------


@pytest.mark.parametrize("server", ["nothing listening", "never answers"])
def test_predict_from_an_unreachable_registry_fails_within_seconds(tmp_path: Path, monkeypatch, capsys, server):
    photos = tmp_path / "photos"
    png_photos(photos, count=1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if server == "never answers":
            silent.listen(8)  # connections queue up, no one reads them
        port = silent.getsockname()[1]  # bound but not listening: connections are refused
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        started = time.monotonic()
        command = ["predict", str(photos), "--model", f"models:/{NAME}@champion", "--out", str(tmp_path / "m")]
        assert cli(command) == 2
        took = time.monotonic() - started
    (error,) = [line for line in error_lines(capsys) if line.startswith("error:")]
    assert error.startswith(f"error: --model models:/{NAME}@champion: MLflow server http://127.0.0.1:{port}")
    kind = "ReadTimeout" if server == "never answers" else "ConnectionError"
    assert f"(MLFLOW_TRACKING_URI) is unreachable: {kind}" in error, error
    assert took < 20, f"took {took:.0f} s"
    assert not any((tmp_path / "m").iterdir())


# --- the served model, in process -------------------------------------------------------------


@pytest.fixture
def model(checkpoint: Path) -> SegmentationModel:
    served_model = SegmentationModel()
    served_model.predictor = TorchSegmenter.load(checkpoint, InferenceSettings(0.5, False, ""), "cpu")
    return served_model


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.where(np.eye(8, dtype=bool), np.nan, 10.0), "image 0: pixel values must be whole numbers 0-255, got NaN"),
        (np.full((8, 8), np.inf), "image 0: pixel values must be whole numbers 0-255, got NaN or infinity"),
        (np.full((8, 8, 3), 0.5), "image 0: pixel values must be whole numbers 0-255, got fractions"),
        (np.full((8, 8), 256), "image 0: pixel values must lie in 0-255, got 256 to 256"),
        (np.full((8, 8), -1.0), "image 0: pixel values must lie in 0-255, got -1 to -1"),
        (np.full((8, 8), 1 + 2j), "image 0: expected pixel values 0-255 of shape HxW or HxWxC, got complex128"),
        (np.full((8, 8), True), "image 0: expected pixel values 0-255 of shape HxW or HxWxC, got bool"),
    ],
)
def test_served_model_refuses_pixel_values_that_are_not_pixels(model, pixels, message):
    with pytest.raises(BadPayload) as raised:
        model.predict(None, [pixels])
    assert raised.value.message.startswith(message), raised.value.message
    assert raised.value.get_http_status_code() == 400


def test_served_model_refuses_ragged_and_non_numeric_pixel_lists(model):
    with pytest.raises(BadPayload, match="image 0: pixel rows or columns of different lengths"):
        model.predict(None, [[[1, 2], [3]]])
    with pytest.raises(BadPayload, match="image 0: expected pixel values 0-255 .* got non-numeric values"):
        model.predict(None, [[["a", "b"], ["c", "d"]]])


def test_served_model_answers_whole_number_floats_as_their_integers(model):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3))
    as_ints, as_floats = model.predict(None, pixels), model.predict(None, pixels.astype(np.float64))
    assert len(as_ints) == 2 and all(np.array_equal(a, b) for a, b in zip(as_ints, as_floats, strict=True))


def test_shortened_keeps_one_short_line_and_says_how_long_it_was():
    assert shortened("short") == "short"
    long = "Ensure that input is valid JSON.\nInput:\n" + "x" * 1_000_000
    assert shortened(long) == f"Ensure that input is valid JSON.... ({len(long):,} characters in all)"
    assert len(shortened("y" * 10**6)) < 250


def test_bounded_refuses_a_large_body_before_parsing_it(monkeypatch):
    parsed = []
    guarded = bounded(lambda data, *rest: parsed.append(data))
    monkeypatch.setenv(pyfunc.MAX_REQUEST_ENV, "1")
    with pytest.raises(BadPayload) as raised:
        guarded(b"x" * (2 << 20), "application/json", None, None)
    assert raised.value.message == (
        "request of 2.0 MiB is larger than the limit of 1 MiB (SERVE_MAX_REQUEST_MB on the server); "
        "send fewer or smaller images per request"
    )
    assert parsed == []
    guarded(b"x" * 1000, "application/json", None, None)
    assert parsed == [b"x" * 1000]
    monkeypatch.delenv(pyfunc.MAX_REQUEST_ENV)
    assert pyfunc.max_request_bytes() == pyfunc.DEFAULT_MAX_REQUEST_MB << 20
    assert bounded(guarded) is guarded  # loading the model twice wraps once


def test_bounded_cuts_mlflows_own_messages_to_one_short_line():
    body = b"{not json" + b"x" * 5_000_000

    def invocations(data, *rest):
        raise MlflowException(f"Ensure that input is a valid JSON formatted string.\nInput: \n{data}\n")

    with pytest.raises(MlflowException) as raised:
        bounded(invocations)(body, "application/json", None, None)
    assert raised.value.message.startswith("Ensure that input is a valid JSON formatted string.... (")
    assert len(raised.value.serialize_as_json()) < 400


class SlowPredictor:
    """Stands in for a network that takes 0.2 s a batch."""

    def __init__(self):
        self.batches = 0

    def masks(self, images):
        self.batches += 1
        time.sleep(0.2)
        return [np.zeros(image.shape[:2], np.uint8) for image in images]


def test_a_request_stops_at_the_servers_timeout_instead_of_running_on(monkeypatch):
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")
    model = SegmentationModel()
    model.predictor = SlowPredictor()
    pixels = np.zeros((8 * 40, 8, 8, 3), np.uint8)  # 40 batches: 8 s of work
    started = time.monotonic()
    with pytest.raises(BadPayload) as raised:
        bounded(lambda data, content_type, m, schema: model.predict(None, data))(pixels, "", None, None)
    took = time.monotonic() - started
    assert raised.value.get_http_status_code() == 504
    assert raised.value.message.startswith("stopped before image ")
    assert "of 320: the request ran into the server's limit of 1 s (mlflow models serve --timeout)" in (
        raised.value.message
    )
    assert took < 1.6 and model.predictor.batches <= 6, (took, model.predictor.batches)
    # Outside the scoring server (no deadline set) the same request runs to the end.
    model.predictor = SlowPredictor()
    assert len(model.predict(None, pixels[:24])) == 24


# --- the served model behind `mlflow models serve` --------------------------------------------

SERVER_TIMEOUT_S = 6


@pytest.fixture(scope="module")
def serving(module_folder):
    """A registered tiny model behind `mlflow models serve` with a short request timeout."""
    root = module_folder("served")
    register(root, tiny_checkpoint(root / "best.pt"), threshold=0.5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", str(SERVER_TIMEOUT_S))
        with served(f"models:/{NAME}/1", f"sqlite:///{root / 'mlflow.db'}", root / "server.log") as running:
            yield running


def post_bytes(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def test_served_model_refuses_a_nan_pixel_with_400(serving):
    status, body = post_bytes(f"{serving[0]}/invocations", b'{"inputs": [[[NaN, 1], [2, 3]]]}')
    answer = json.loads(body)
    assert status == 400, body[:300]
    assert answer["message"] == "image 0: pixel values must be whole numbers 0-255, got NaN or infinity"
    status, body = post_bytes(f"{serving[0]}/invocations", b'{"inputs": [[[0.25, 1], [2, 3]]]}')
    assert status == 400 and b"got fractions" in body


def test_served_model_quotes_no_more_than_a_prefix_of_a_malformed_body(serving):
    body = b'{"inputs": ["' + b"A" * 1_000_000 + b"}"
    status, answer = post_bytes(f"{serving[0]}/invocations", body)
    assert status == 400 and len(answer) < 500, answer[:600]
    message = json.loads(answer)["message"]
    assert message.startswith("Invalid input. Ensure that input is a valid JSON formatted string. Error: ")
    assert "A" * 20 not in message and message.endswith(" characters in all)"), message


def test_served_model_refuses_a_49_mb_string_without_growing(serving):
    base, process = serving
    pids = model_processes(process.pid)
    before = {pid: peak_rss_kib(pid) for pid in pids}
    body = json.dumps({"inputs": ["QUFB" * (49_000_000 // 4)]}).encode()
    status, answer = post_bytes(f"{base}/invocations", body)
    grown_mib = max(peak_rss_kib(pid) - before[pid] for pid in pids) / 1024
    assert status == 400, answer[:300]
    assert json.loads(answer)["message"].startswith("request of 46.7 MiB is larger than the limit of 20 MiB")
    assert grown_mib < 200, f"a server process's peak memory grew by {grown_mib:.0f} MiB"


def test_served_model_stops_working_on_a_request_past_its_timeout(serving):
    base, process = serving
    _, png = cv2.imencode(".png", np.full((1500, 1500, 3), 90, np.uint8))
    encoded = base64.b64encode(png.tobytes()).decode()
    body = json.dumps({"inputs": [encoded] * 1000}).encode()  # far more than SERVER_TIMEOUT_S of work
    assert len(body) < 20 << 20
    started = time.monotonic()
    status, answer = post_bytes(f"{base}/invocations", body)
    took = time.monotonic() - started
    assert status == 504, answer[:300]
    assert took < SERVER_TIMEOUT_S + 10, f"answered after {took:.0f} s"
    time.sleep(2)  # the request's last image finishes
    pids = model_processes(process.pid)
    busy = cpu_seconds(pids)
    time.sleep(4)
    spent = cpu_seconds(pids) - busy
    assert spent < 1.0, f"the server spent {spent:.1f} s of CPU in 4 s after answering"
    status, answer = post_bytes(f"{base}/invocations", json.dumps({"inputs": [encoded]}).encode())
    assert status == 200, answer[:300]
