"""The README's examples, run as written. A tested block is the fenced code block on the line
after an HTML comment `<!-- tested: NAME -->`; the serving examples run against a served tiny
model with a 5 MB photo, the experiments table against a tiny DVC project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from ruamel.yaml import YAML

from pipeline.core.paths import VAL_DICE_DEPLOYED
from tests.helpers.modelstore import NAME, register, tiny_checkpoint
from tests.helpers.project import GIT, PROJECT_ROOT, load_params, run
from tests.helpers.serving import served

README = PROJECT_ROOT / "README.md"
TESTED_BLOCK = re.compile(r"^<!-- tested: ([\w-]+) -->\n```\w*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# The address the README's clients send to (its `mlflow models serve ... -p 5001`); the test's
# server listens on a free port instead, the one change made to the examples before they run.
README_URL = "http://127.0.0.1:5001"
PHOTO_SIZE = (3000, 4000)  # height, width: a 12-megapixel phone photo
TERMINAL = 80


def readme_block(name: str) -> str:
    blocks = dict(TESTED_BLOCK.findall(README.read_text()))
    assert name in blocks, f"README.md has no block marked <!-- tested: {name} --> (it has {sorted(blocks)})"
    return blocks[name]


def client_environment() -> dict[str, str]:
    """A shell whose `python` is this interpreter, as in the README's activated environment."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def phone_photo(module_folder) -> Path:
    """A noisy 4000 x 3000 JPEG of about 5 MB: as hard to compress as a phone photo."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 28, (*PHOTO_SIZE, 3), dtype=np.uint8)
    pixels += np.linspace(0, 200, PHOTO_SIZE[1]).astype(np.uint8)[None, :, None]
    path = module_folder("photo") / "photo.jpg"
    assert cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert 4.5e6 < path.stat().st_size < 7e6, path.stat().st_size
    return path


@pytest.fixture(scope="module")
def server(module_folder):
    """`mlflow models serve` of a tiny registered champion on a free loopback port."""
    root = module_folder("store")
    register(root, tiny_checkpoint(root / "best.pt"), threshold=0.5)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    with served(f"models:/{NAME}@champion", f"sqlite:///{root / 'mlflow.db'}", root / "server.log") as (base, _):
        yield base


def client_folder(tmp_path: Path, photo: Path | None) -> Path:
    """A folder holding photo.jpg: the phone photo, or a file that is no image at all."""
    if photo is None:
        (tmp_path / "photo.jpg").write_bytes(b"this is not a photo\n" * 100)
    else:
        shutil.copyfile(photo, tmp_path / "photo.jpg")
    return tmp_path


def against(block: str, server: str) -> str:
    assert block.count(README_URL) == 1, f"the example should send to {README_URL}:\n{block}"
    return block.replace(README_URL, server)


def assert_mask_of_photo(folder: Path) -> None:
    mask = cv2.imread(str(folder / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask is not None, "mask.png is not a PNG image"
    assert mask.shape[:2] == PHOTO_SIZE
    assert set(np.unique(mask)) <= {0, 255}


def test_readme_serve_command_serves_the_address_the_examples_send_to():
    serve = next(line for line in README.read_text().splitlines() if "mlflow models serve -m" in line)
    assert serve.endswith(f"-p {README_URL.rsplit(':', 1)[1]}")


def test_readme_curl_example_returns_a_mask_for_a_5_mb_photo(server, phone_photo, tmp_path):
    folder = client_folder(tmp_path, phone_photo)
    script = against(readme_block("serving-curl"), server)
    result = subprocess.run(
        ["bash", "-c", script], cwd=folder, env=client_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert_mask_of_photo(folder)


def test_readme_curl_example_keeps_the_servers_message_when_refused(server, tmp_path):
    folder = client_folder(tmp_path, None)
    script = against(readme_block("serving-curl"), server)
    result = subprocess.run(
        ["bash", "-c", script], cwd=folder, env=client_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "400" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (folder / "mask.png").exists()
    assert "image 0" in json.loads((folder / "answer.json").read_text())["message"]


def test_readme_python_example_returns_a_mask_for_a_5_mb_photo(server, phone_photo, tmp_path):
    folder = client_folder(tmp_path, phone_photo)
    (folder / "client.py").write_text(against(readme_block("serving-python"), server))
    result = subprocess.run(
        [sys.executable, "client.py"], cwd=folder, env=client_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert_mask_of_photo(folder)


def test_readme_python_example_says_what_the_server_refused(server, tmp_path):
    folder = client_folder(tmp_path, None)
    (folder / "client.py").write_text(against(readme_block("serving-python"), server))
    result = subprocess.run(
        [sys.executable, "client.py"], cwd=folder, env=client_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("HTTP 400: ") and "image 0" in result.stderr
    assert not (folder / "mask.png").exists()


# The metric files the pipeline's stages declare, with the keys they write for a binary model.
METRIC_KEYS = {
    "metrics/train.json": ["best_epoch", "best_val_loss", "val_dice_at_best"],
    "metrics/evaluate.json": [
        *(
            f"test_{name}{part}"
            for name in ("dice", "iou", "precision", "recall")
            for part in ("", "_ci_low", "_ci_high")
        ),
        "test_loss",
        "threshold",
        VAL_DICE_DEPLOYED,
    ],
}

STAGE_SCRIPT = f"""\
import json
from pathlib import Path

from ruamel.yaml import YAML

lr = float(YAML(typ="safe", pure=True).load(Path("params.yaml").read_text())["train"]["lr"])
for path, keys in {METRIC_KEYS!r}.items():
    values = {{key: round(0.61234567 - lr * (index + 1), 8) for index, key in enumerate(keys)}}
    Path(path).parent.mkdir(exist_ok=True)
    Path(path).write_text(json.dumps(values))
"""


@pytest.fixture(scope="module")
def experiments(module_folder) -> Path:
    """A tiny DVC project with the pipeline's params and metric files, and two experiments:
    lr-small (train.lr changed) and, from there, sappy-tans (train.epochs changed too)."""
    project = module_folder("experiments")
    shutil.copyfile(PROJECT_ROOT / "params.yaml", project / "params.yaml")
    (project / "stage.py").write_text(STAGE_SCRIPT)
    params = [f"{section}.{key}" for section, values in load_params().items() for key in values]
    stage = {
        "cmd": "python stage.py",
        "deps": ["stage.py"],
        "params": params,
        "metrics": [{path: {"cache": False}} for path in METRIC_KEYS],
    }
    (project / "dvc.yaml").write_text(json.dumps({"stages": {"all": stage}}))  # JSON is YAML
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    run(project, "dvc", "init", "-q", check=True)
    run(project, "dvc", "repro", "-q", check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-qm", "baseline"], cwd=project, check=True)
    run(project, "dvc", "exp", "run", "-q", "-n", "lr-small", "-S", "train.lr=0.001", check=True)
    run(project, "dvc", "exp", "run", "-q", "-n", "sappy-tans", "-S", "train.epochs=5", check=True)
    return project


def widest_line(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


@pytest.mark.process
def test_readme_exp_show_fits_80_columns_with_the_params_that_changed(experiments):
    command = readme_block("exp-show").strip()
    assert VAL_DICE_DEPLOYED in command
    result = run(experiments, "bash", "-c", command, COLUMNS=str(TERMINAL))
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert widest_line(table) <= TERMINAL and "…" not in table, table
    header = table.splitlines()[1].split()
    assert header == ["Experiment", VAL_DICE_DEPLOYED, "train.epochs", "train.lr"], table
    assert "lr-small" in table and "sappy-tans" in table
    # At a terminal without the pager, DVC fits the table to the terminal, dropping what does
    # not fit: the same table, nothing left out.
    unpaged = run(experiments, "bash", "-c", f"{command} --no-pager", COLUMNS=str(TERMINAL))
    assert unpaged.stdout.splitlines()[1].split() == header, unpaged.stdout


def test_the_experiments_project_declares_the_pipelines_metric_files():
    stages = YAML(typ="safe", pure=True).load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    declared = [next(iter(out)) for stage in stages.values() for out in stage.get("metrics", [])]
    assert declared == list(METRIC_KEYS)


@pytest.mark.process
def test_readme_metrics_command_fits_80_columns_and_lists_every_metric(experiments):
    readme = README.read_text()
    command = "dvc metrics diff --all --no-path"
    assert f"{command}   #" in readme
    result = run(experiments, *command.split(), check=True)
    assert widest_line(result.stdout) <= TERMINAL, result.stdout
    keys = [key for keys in METRIC_KEYS.values() for key in keys]
    listed = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert sorted(listed) == sorted(keys), result.stdout
