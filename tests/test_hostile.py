"""Hostile and broken input, injected for real at every entry point: fetch, split, predict, the
served model and the tracking server. Each test is one row of docs/reliability.md's table."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch

from pipeline.__main__ import main as cli
from pipeline.core.classes import PERSON
from pipeline.core.config import DataConfig, SplitConfig, load_config
from pipeline.core.errors import ConfigError, DataError, FetchError
from pipeline.core.files import sha256_file
from pipeline.core.images import INFERENCE_BATCH, MAX_IMAGE_PIXELS
from pipeline.core.splits import StagedRows
from pipeline.fetch import archive
from pipeline.fetch.dataset import fetch_dataset
from pipeline.model.checkpoint import CHECKPOINT_FORMAT
from pipeline.serve.predict import predict_files
from pipeline.serve.pyfunc import BadPayload, SegmentationModel
from pipeline.serve.registered import COMPLETE_TAG
from pipeline.serve.settings import InferenceSettings
from pipeline.serve.torch_backend import TorchSegmenter
from pipeline.split.preparation import build_split
from tests.helpers.datasets import make_dataset
from tests.helpers.httpserver import FileServer
from tests.helpers.modelstore import NAME, register, tiny_checkpoint, tiny_onnx, use_store
from tests.helpers.project import PROJECT_ROOT, load_params, write_params
from tests.helpers.serving import model_processes, post, served

HUGE_SIDE = 20_000  # 400 million pixels: 1.2 GB as RGB once decoded


def huge_png(side: int = HUGE_SIDE) -> bytes:
    """A real side x side RGB PNG of one colour, compressed row by row (never held decoded): about 1 MB."""
    row = b"\0" + bytes(3 * side)  # filter byte, then black pixels
    compress = zlib.compressobj(9)
    data = b"".join(compress.compress(row) for _ in range(side)) + compress.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def fetch(source: Path | str, tmp_path: Path) -> Path:
    return fetch_dataset(str(source), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)


def error_lines(capsys) -> list[str]:
    """What the command printed as errors (MLflow's own progress bars aside)."""
    return [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]


# --- fetch: a folder source ------------------------------------------------------------------


def test_folder_link_out_of_the_dataset_is_refused_naming_link_and_target(tmp_path: Path):
    secret = tmp_path / "home" / ".aws" / "credentials"
    secret.parent.mkdir(parents=True)
    secret.write_text("aws_secret_access_key = hunter2\n")
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "images" / "x.jpg").symlink_to(secret)
    with pytest.raises(FetchError) as caught:
        fetch(dataset, tmp_path)
    message = str(caught.value)
    assert f"{dataset}/images/x.jpg is a symbolic link to {secret}" in message and "outside the dataset" in message
    assert not (tmp_path / "raw").exists()
    copies = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != secret]
    assert not any(b"hunter2" in p.read_bytes() for p in copies)


def test_folder_link_to_the_root_of_the_disk_is_refused(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "disk").symlink_to("/")
    with pytest.raises(FetchError, match=r"disk is a symbolic link to /, outside the dataset"):
        fetch(dataset, tmp_path)
    assert not (tmp_path / "raw").exists()


def test_folder_links_that_stay_inside_are_followed(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "images" / "copy.jpg").symlink_to(dataset / "images" / "000.jpg")
    (dataset / "more").symlink_to("masks")
    raw = fetch(dataset, tmp_path)
    copied = raw / "images" / "copy.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == (dataset / "images" / "000.jpg").read_bytes()
    assert sorted(p.name for p in (raw / "more").iterdir()) == ["000.png", "001.png"]


def test_folder_link_loop_is_refused(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "images" / "again").symlink_to("..")
    with pytest.raises(FetchError, match=r"images/again is a symbolic link to .*one of its own parent folders"):
        fetch(dataset, tmp_path)


def test_named_pipe_in_a_folder_is_refused_not_waited_on(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    os.mkfifo(dataset / "images" / "003.jpg")
    with pytest.raises(FetchError, match=r"images/003.jpg is not a regular file"):
        fetch(dataset, tmp_path)


def test_non_utf8_file_name_in_a_dataset_is_named(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    os.close(os.open(os.fsencode(dataset / "images") + b"/caf\xe9.jpg", os.O_CREAT | os.O_WRONLY))
    with pytest.raises(FetchError) as caught:
        fetch(dataset, tmp_path)
    assert "file name that is not valid UTF-8: images/caf\\xe9.jpg; rename it" in str(caught.value)
    assert not (tmp_path / "raw").exists()


# --- fetch: an archive source ----------------------------------------------------------------


def zeros_entry(bundle: zipfile.ZipFile, name: str, size: int) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with bundle.open(info, "w", force_zip64=True) as entry:
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            entry.write(block)


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as bundle:
        zeros_entry(bundle, "data/images/001.png", 256 << 20)  # 256 MiB of zeros
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(FetchError) as caught:
        fetch(bomb, tmp_path)
    message = str(caught.value)
    assert "entry 'data/images/001.png' expands" in message and "MAX_COMPRESSION_RATIO" in message
    assert not (tmp_path / "raw").exists() and not list(tmp_path.glob(".raw.*"))


def test_tar_gz_bomb_is_refused_before_anything_is_written(tmp_path: Path):
    sparse = tmp_path / "zeros.bin"
    with sparse.open("wb") as handle:
        handle.truncate(256 << 20)  # 256 MiB of zeros, a hole on disk
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=1) as bundle:
        bundle.add(sparse, "data/masks/001.png")
    with pytest.raises(FetchError, match=r"its 1 entries \(the largest 'data/masks/001.png'\) expands"):
        fetch(bomb, tmp_path)
    assert not (tmp_path / "raw").exists()


def test_archive_beyond_the_total_size_limit_is_refused_and_the_limit_can_be_raised(tmp_path: Path, monkeypatch):
    dataset = make_dataset(tmp_path / "dataset", count=4)
    bundle = tmp_path / "data.zip"
    with zipfile.ZipFile(bundle, "w") as out:
        for path in sorted(dataset.rglob("*.*")):
            out.write(path, path.relative_to(tmp_path))
    monkeypatch.setattr(archive, "MAX_EXTRACTED_BYTES", 10_000)
    with pytest.raises(FetchError, match=r"expands to [\d,]+ bytes, more than the limit of 10,000"):
        fetch(bundle, tmp_path)
    monkeypatch.setattr(archive, "MAX_EXTRACTED_BYTES", 10**9)
    assert len(list(fetch(bundle, tmp_path).rglob("*.png"))) == 4


# --- fetch: a download -----------------------------------------------------------------------


def zipped_dataset(tmp_path: Path) -> bytes:
    dataset = make_dataset(tmp_path / "zipped", count=2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for path in sorted(dataset.rglob("*.*")):
            out.write(path, path.relative_to(dataset))
    return buffer.getvalue()


def test_tampered_cached_download_is_downloaded_again(tmp_path: Path, capsys):
    with FileServer() as server:
        route = server.add("/data.zip", zipped_dataset(tmp_path))
        fetch(server.url("/data.zip"), tmp_path)
        (cached,) = (tmp_path / "cache").glob("*-data.zip")
        cached.write_bytes(b"PK" + cached.read_bytes()[2:-1])  # changed after it was downloaded
        raw = fetch(server.url("/data.zip"), tmp_path)
    assert len(route.requests) == 2
    assert "is not the file that was downloaded; downloading again" in capsys.readouterr().out
    assert sorted(p.name for p in (raw / "images").iterdir()) == ["000.jpg", "001.jpg"]


def test_plain_http_source_is_warned_about(tmp_path: Path, capsys):
    with FileServer() as server:
        server.add("/data.zip", zipped_dataset(tmp_path))
        fetch(server.url("/data.zip"), tmp_path)
    assert "is plain http: anyone on the way can change the download" in capsys.readouterr().out


def project_with(tmp_path: Path, **data: object) -> Path:
    """A folder with params.yaml (``data`` keys replaced) in which stage scripts can run."""
    params = load_params()
    params["data"].update(manifest=None, **data)
    params["model"].update(encoder="resnet18", encoder_weights=None)
    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", params)
    return project


def stage(project: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "stages" / f"{name}.py")],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.process
@pytest.mark.parametrize("name", ["fetch", "split", "train", "evaluate"])
def test_ctrl_c_while_a_stage_starts_up_is_one_line(tmp_path: Path, name: str):
    project = project_with(tmp_path, source="synthetic:4")
    process = stage(project, name)
    maps = Path(f"/proc/{process.pid}/maps")
    while process.poll() is None and "libtorch" not in maps.read_text():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # while torch is being imported, which takes seconds
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"{name}: interrupted; outputs written so far are complete files. Run `dvc repro` to continue."
    ]


def test_ctrl_c_during_a_download_is_one_line_and_keeps_the_partial_file(tmp_path: Path):
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()

    def stall() -> None:  # a server that sends the start of a large file, then nothing
        connection, _ = listener.accept()
        connection.recv(4096)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + bytes(100_000))
        accepted.set()
        time.sleep(120)
        connection.close()

    threading.Thread(target=stall, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/data.zip"
    project = project_with(tmp_path, source=url)
    process = stage(project, "fetch")
    assert accepted.wait(120)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    listener.close()
    assert process.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fetch: interrupted;")
    assert not (project / "data" / "raw").exists()
    assert [p.suffix for p in (project / "data" / "downloads").iterdir()] == [".part"]


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["csv:/etc/passwd", "folders:/etc,/tmp", "csv:../../outside.csv"])
def test_layout_path_out_of_the_dataset_is_a_config_error(tmp_path: Path, layout: str):
    params = load_params()
    params["data"]["layout"] = layout
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "params.yaml")
    assert "data.layout:" in str(caught.value) and "must be a path relative to the dataset's top folder" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "it holds nothing (the file is empty)"),
        (b"- a list\n", "it holds a list"),
        (b"data: [1\n", "not valid YAML at line 2, column 1"),
        (b"\xff\xfe data", "cannot be read as UTF-8 text"),
    ],
)
def test_empty_or_malformed_params_file_is_one_line(tmp_path: Path, content: bytes, message: str):
    (tmp_path / "params.yaml").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "params.yaml")
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


# --- split -----------------------------------------------------------------------------------


def split_config(policy: str) -> tuple[DataConfig, SplitConfig]:
    data = DataConfig(
        source="unused",
        manifest=None,
        layout="auto",
        classes=["background", "person"],
        palette=None,
        on_bad_sample=policy,
        image_size=32,
        resize="squash",
    )
    return data, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=0)


def test_decompression_bomb_photo_is_a_bad_sample_like_any_other(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=10, size=32)
    (raw / "images" / "009.jpg").unlink()
    (raw / "images" / "009.png").write_bytes(huge_png())
    with pytest.raises(DataError, match=r"009.png: image is larger than the limit of 40,000,000 pixels"):
        build_split(raw, tmp_path / "split", tmp_path / "report.json", *split_config("error"))
    report = build_split(raw, tmp_path / "split", tmp_path / "report.json", *split_config("skip"))
    assert report["pairs"]["used"] == 9
    (skipped,) = report["skipped"]
    assert skipped["reason"] == "too_large" and skipped["files"][0].endswith("009.png")


def test_failed_split_leaves_the_previous_split_whole(tmp_path: Path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", count=10, size=32)
    split = tmp_path / "split"
    build_split(raw, split, tmp_path / "report.json", *split_config("error"))
    before = {p.relative_to(split): p.read_bytes() for p in split.rglob("*") if p.is_file()}
    saved = []

    copy = StagedRows.copy

    def crash_after_two(rows, kind, chosen, handle):  # the disk fills up (or Ctrl-C) in the middle of writing
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(copy(rows, kind, chosen, handle))

    monkeypatch.setattr(StagedRows, "copy", crash_after_two)
    (raw / "images" / "000.jpg").write_bytes((raw / "images" / "001.jpg").read_bytes())
    with pytest.raises(KeyboardInterrupt):
        build_split(raw, split, tmp_path / "report.json", *split_config("error"))
    assert {p.relative_to(split): p.read_bytes() for p in split.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".split")]


# --- predict: a registered model -------------------------------------------------------------

HOSTILE_MODEL = """
import mlflow

open({marker!r}, "w").write("registered code ran")


class Hostile(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Hostile())
"""


def register_code(root: Path, code: str, **log_kwargs) -> str:
    """Registers ``code`` as a models-from-code pyfunc, as anyone with write access to the registry could."""
    use_store(root)
    script = root / "hostile_model.py"
    script.write_text(code)
    experiment = mlflow.get_experiment_by_name("tests").experiment_id
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(script), registered_model_name=NAME, **log_kwargs)
    version = str(info.registered_model_version)
    # Anyone with write access can set the completion mark too: it is not what keeps code from running.
    mlflow.MlflowClient().set_model_version_tag(NAME, version, COMPLETE_TAG, "true")
    return version


def exported(checkpoint: Path, path: Path) -> Path:
    """The checkpoint's ONNX export, as evaluate writes it (threshold 0.5, no TTA)."""
    return tiny_onnx(checkpoint, InferenceSettings(0.5, False, sha256_file(checkpoint)), path)


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", use_store(root))
    return root


def test_predict_never_runs_a_registered_models_code(store: Path, tmp_path: Path, capsys):
    checkpoint = tiny_checkpoint(store / "best.pt")
    marker = tmp_path / "marker"
    version = register_code(
        store,
        HOSTILE_MODEL.format(marker=str(marker)),
        artifacts={"checkpoint": str(checkpoint), "onnx": str(exported(checkpoint, store / "model.onnx"))},
    )
    marker.unlink(missing_ok=True)  # logging may have run it; only loading for predict counts
    photos = make_dataset(tmp_path / "photos", count=1)
    uri = f"models:/{NAME}/{version}"
    assert cli(["predict", str(photos / "images"), "--model", uri, "--out", str(tmp_path / "masks")]) == 0
    assert (tmp_path / "masks" / "000.png").exists()
    assert not marker.exists(), "predict ran the registered model's code"
    # The same version loaded as MLflow loads it (and `mlflow models serve` does) runs the code:
    mlflow.pyfunc.load_model(uri)
    assert marker.read_text() == "registered code ran"


def test_predict_refuses_a_registered_version_without_checkpoint_or_settings(store: Path, tmp_path: Path, capsys):
    marker = tmp_path / "marker"
    version = register_code(store, HOSTILE_MODEL.format(marker=str(marker)))
    marker.unlink(missing_ok=True)
    uri = f"models:/{NAME}/{version}"
    photos = make_dataset(tmp_path / "photos", count=1)
    capsys.readouterr()
    assert cli(["predict", str(photos / "images"), "--model", uri, "--out", str(tmp_path / "masks")]) == 2
    (error,) = error_lines(capsys)
    assert error.startswith(f"error: --model {uri}: not a model registered by this pipeline")
    assert not marker.exists() and not any((tmp_path / "masks").iterdir())


def test_predict_refuses_a_registered_checkpoint_that_is_not_the_evaluated_one(store: Path, tmp_path: Path, capsys):
    checkpoint = tiny_checkpoint(store / "best.pt")
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    version = register_code(
        store,
        HOSTILE_MODEL.format(marker=str(tmp_path / "marker")),
        artifacts={"checkpoint": str(other), "onnx": str(exported(checkpoint, store / "model.onnx"))},
    )
    photos = make_dataset(tmp_path / "photos", count=1)
    uri = f"models:/{NAME}/{version}"
    command = ["predict", str(photos / "images"), "--model", uri, "--out", str(tmp_path / "masks")]
    assert cli([*command, "--backend", "torch"]) == 2
    (error,) = error_lines(capsys)
    assert "the checkpoint is not the one its ONNX export was made from" in error


# --- predict: photos and arguments -----------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "model" / "best.pt")


def predict(*args: str | Path) -> int:
    return cli(["predict", *map(str, args)])


def test_predict_on_a_0_byte_image_still_writes_the_good_ones(tmp_path: Path, checkpoint: Path, capsys):
    photos = make_dataset(tmp_path / "photos", count=3)
    (photos / "images" / "001.jpg").write_bytes(b"")
    assert predict(photos / "images", "--model", checkpoint, "--out", tmp_path / "masks", "--batch-size", "3") == 1
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["000.png", "002.png"]
    assert f"predict: skipped {photos / 'images' / '001.jpg'}: cannot be decoded as an image" in capsys.readouterr().out


def test_predict_on_a_huge_image_refuses_it_and_writes_the_others(tmp_path: Path, checkpoint: Path, capsys):
    photos = make_dataset(tmp_path / "photos", count=2)
    (photos / "images" / "huge.png").write_bytes(huge_png())
    assert predict(photos / "images", "--model", checkpoint, "--out", tmp_path / "masks") == 1
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["000.png", "001.png"]
    out = capsys.readouterr().out
    assert f"huge.png: image is larger than the limit of {MAX_IMAGE_PIXELS:,} pixels" in out


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_predict_out_that_cannot_be_a_folder_is_one_line(tmp_path: Path, checkpoint: Path, capsys, kind: str):
    photos = make_dataset(tmp_path / "photos", count=1)
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" if kind == "a file" else tmp_path / "taken" / "masks"
    assert predict(photos / "images", "--model", checkpoint, "--out", out) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"error: --out {out}: cannot create the folder")


def test_predict_on_a_checkpoint_with_bad_metadata_is_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.pt"
    payload = {"model_config": {"arch": "NoSuchNet"}, "classes": PERSON.to_dict(), "loss": "dice_bce", "state_dict": {}}
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, bad)
    photos = make_dataset(tmp_path / "photos", count=1)
    assert predict(photos / "images", "--model", bad, "--out", tmp_path / "masks") == 2
    (error,) = error_lines(capsys)
    assert error.startswith(f"error: {bad}: its metadata does not describe a model this pipeline can build")


def test_predict_on_an_empty_folder_says_no_images_were_found(tmp_path: Path, checkpoint: Path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict(tmp_path / "empty", "--model", checkpoint, "--out", tmp_path / "masks") == 2
    assert f"error: no images found in {tmp_path / 'empty'}" in capsys.readouterr().err


def test_predict_output_names_never_collide(tmp_path: Path, checkpoint: Path):
    photos = make_dataset(tmp_path / "photos", count=3)
    (photos / "images" / "000.jpg").rename(photos / "images" / "x.jpg")
    (photos / "images" / "001.jpg").rename(photos / "images" / "x_overlay.jpg")
    (photos / "images" / "002.jpg").rename(photos / "images" / "x_probability.jpg")
    args = ("--model", checkpoint, "--out", tmp_path / "masks", "--overlay", "--probabilities")
    assert predict(photos / "images", *args) == 0
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    # Inputs are taken in name order: x, x_overlay, x_probability.
    assert written == sorted(
        ["x.png", "x_overlay.png", "x_probability.png"]
        + ["x_overlay_.png", "x_overlay__overlay.png", "x_overlay__probability.png"]
        + ["x_probability_.png", "x_probability__overlay.png", "x_probability__probability.png"]
    )
    # Each mask is a mask (one channel) and each overlay a photo (three), whatever the names suggest.
    channels = {name: cv2.imread(str(tmp_path / "masks" / name), cv2.IMREAD_UNCHANGED).ndim for name in written}
    assert {name for name, ndim in channels.items() if ndim == 3} == {
        "x_overlay.png",
        "x_overlay__overlay.png",
        "x_probability__overlay.png",
    }


@pytest.mark.process
def test_predict_on_a_non_utf8_file_name_writes_its_mask(tmp_path: Path, checkpoint: Path):
    photos = make_dataset(tmp_path / "photos", count=1)
    os.rename(photos / "images" / "000.jpg", os.fsencode(photos / "images") + b"/caf\xe9.jpg")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", str(photos / "images"), "--model", str(checkpoint)]
        + ["--out", str(tmp_path / "masks")],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert os.listdir(os.fsencode(tmp_path / "masks")) == [b"caf\xe9.png"]


@pytest.mark.parametrize("threshold", ["2", "nan", "0", "half"])
def test_predict_threshold_outside_0_1_is_refused(tmp_path: Path, checkpoint: Path, capsys, threshold: str):
    with pytest.raises(SystemExit) as exited:
        predict(tmp_path, "--model", checkpoint, "--out", tmp_path / "masks", "--threshold", threshold)
    assert exited.value.code == 2
    assert f"--threshold: expected a probability strictly between 0 and 1, got '{threshold}'" in capsys.readouterr().err


def test_manifest_of_a_missing_folder_is_refused(tmp_path: Path, capsys):
    assert cli(["manifest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.json")]) == 2
    assert f"error: {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def forward_batches(predictor: TorchSegmenter) -> list[int]:
    """Records the batch size of every forward pass of the predictor's network."""
    sizes: list[int] = []
    predictor.model.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    return sizes


def test_predict_runs_many_images_in_bounded_batches(tmp_path: Path, checkpoint: Path):
    photos = make_dataset(tmp_path / "photos", count=20, size=32)
    predictor = TorchSegmenter.load(checkpoint, InferenceSettings(0.5, False, ""), "cpu")
    sizes = forward_batches(predictor)
    files = sorted((photos / "images").iterdir())
    written, failures = predict_files(predictor, files, tmp_path / "masks", batch_size=INFERENCE_BATCH)
    assert len(written) == 20 and not failures
    assert sizes == [8, 8, 4]


# --- the served model ------------------------------------------------------------------------


def test_served_model_runs_a_request_of_many_images_in_bounded_batches(checkpoint: Path):
    model = SegmentationModel()
    model.predictor = TorchSegmenter.load(checkpoint, InferenceSettings(0.5, False, ""), "cpu")
    sizes = forward_batches(model.predictor)
    _, png = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    count = 5 * INFERENCE_BATCH + 3  # several full batches and a short one
    answers = model.predict(None, np.array([base64.b64encode(png.tobytes()).decode()] * count))
    assert len(answers) == count and max(sizes) == INFERENCE_BATCH and sum(sizes) == count


def test_served_model_refuses_a_pixel_array_over_the_limit(checkpoint: Path):
    model = SegmentationModel()
    model.predictor = TorchSegmenter.load(checkpoint, InferenceSettings(0.5, False, ""), "cpu")
    big = np.zeros((1, 8000, 6000))  # never touched: refused from its shape
    with pytest.raises(BadPayload, match=r"image 0: 6000x8000 pixels, more than the limit of 40,000,000"):
        model.predict(None, big)


@pytest.fixture(scope="module")
def serving(module_folder):
    """The champion of a store behind `mlflow models serve`, for the whole module."""
    root = module_folder("served")
    register(root, tiny_checkpoint(root / "best.pt"), threshold=0.5)
    with served(f"models:/{NAME}/1", f"sqlite:///{root / 'mlflow.db'}", root / "server.log") as running:
        yield running


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_served_model_refuses_a_20000x20000_png_without_decoding_it(serving):
    base, process = serving
    pids = model_processes(process.pid)
    before = {pid: peak_rss_kib(pid) for pid in pids}
    png = huge_png()
    assert len(png) < 2 << 20
    status, answer = post(f"{base}/invocations", {"inputs": [base64.b64encode(png).decode()]})
    grown_mib = max(peak_rss_kib(pid) - before[pid] for pid in pids) / 1024
    assert status == 400 and answer["message"].startswith("image 0: image is larger than the limit of")
    assert grown_mib < 100, f"a worker's peak memory grew by {grown_mib:.0f} MiB"


def test_served_model_names_an_empty_image(serving):
    status, answer = post(f"{serving[0]}/invocations", {"inputs": ["aGk=", ""]})
    assert status == 400 and answer["message"] == "image 0: cannot be decoded as an image"
    status, answer = post(f"{serving[0]}/invocations", {"inputs": [""]})
    assert status == 400 and answer["message"] == "image 0: empty (no image bytes)"


def test_served_model_errors_never_echo_the_request(serving):
    junk = base64.b64encode(os.urandom(300_000)).decode()
    status, answer = post(f"{serving[0]}/invocations", {"inputs": [junk]})
    assert status == 400 and answer["message"] == "image 0: cannot be decoded as an image"
    status, answer = post(f"{serving[0]}/invocations", {"dataframe_split": {"columns": [junk], "data": [["x"]]}})
    assert status == 400 and junk[:100] not in answer["message"] and len(answer["message"]) < 300
