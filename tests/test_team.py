"""Team scale, with the real components: a tracking server on PostgreSQL, a DVC remote, a colleague's clone.

The module starts one PostgreSQL cluster and one `mlflow server` (with logins) on free 127.0.0.1
ports through scripts/tracking_server.py (the script `make tracking-server` runs), shares them
among its tests and stops both at the end, pass or fail. The pipeline runs under a colleague's
account, created as the README says. A small synthetic dataset keeps the pipeline runs to seconds.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import requests

from tests.helpers.datasets import make_dataset
from tests.helpers.project import (
    GIT,
    PROJECT_ROOT,
    STAGES,
    copy_project,
    load_params,
    ran_stages,
    run,
    run_queued_experiments,
    tiny_params,
    write_params,
)
from tests.helpers.serving import free_port, post, served

SCRIPT = PROJECT_ROOT / "scripts" / "tracking_server.py"
MODEL = "human-segmentation-unet"
EPOCHS = 2
HISTORY_METRICS = ("train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds")
SECRETS = ("basic_auth.ini", "pgpass", "flask-secret")

pytestmark = pytest.mark.process


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    root: Path  # TRACKING_DIR
    tracking_uri: str
    pg_port: int
    env: dict[str, str]  # the TRACKING_* settings it was started with

    def script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=300
        )


@pytest.fixture(scope="module")
def server():
    """PostgreSQL + `mlflow server` on loopback, started and stopped as `make tracking-server(-stop)` does."""
    spec = importlib.util.spec_from_file_location("tracking_server", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        script.postgres_bin()
    except script.ServerError as exc:
        pytest.skip(f"the team tests need PostgreSQL: {exc}")
    # Not under pytest's tmp folder: as root, PostgreSQL runs as the postgres user, which must reach it.
    folder = Path(tempfile.mkdtemp(prefix="unet-team-server-"))
    folder.chmod(0o755)
    port, pg_port = free_port(), free_port()
    settings = {"TRACKING_DIR": str(folder / "tracking"), "TRACKING_PORT": str(port)}
    settings |= {"TRACKING_PG_PORT": str(pg_port), "TRACKING_WORKERS": "1"}
    server = Server(folder / "tracking", f"http://127.0.0.1:{port}", pg_port, {**os.environ, **settings})
    try:
        started = server.script("start")
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines()[-1] == f"export MLFLOW_TRACKING_URI={server.tracking_uri}"
        yield server
    finally:
        stopped = server.script("stop")
        shutil.rmtree(folder, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not port_open(port) and not port_open(pg_port)


@pytest.fixture(scope="module")
def login(server) -> dict[str, str]:
    """A colleague's account, made with `tracking_server.py add-user`: the environment MLflow clients need."""
    made = server.script("add-user", "colleague")
    assert made.returncode == 0, made.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in made.stdout.splitlines() if "=" in line)
    assert exports["MLFLOW_TRACKING_USERNAME"] == "colleague" and len(exports["MLFLOW_TRACKING_PASSWORD"]) >= 12
    return {"MLFLOW_TRACKING_URI": server.tracking_uri, **exports}


@pytest.fixture(scope="module")
def client(server, login) -> mlflow.MlflowClient:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in login.items():
            patch.setenv(key, value)
        mlflow.set_tracking_uri(server.tracking_uri)
        yield mlflow.MlflowClient(server.tracking_uri)


@pytest.fixture(scope="module")
def photos(module_folder) -> Path:
    return make_dataset(module_folder("photos"), count=24, size=64, seed=3)


@pytest.fixture(scope="module")
def project(module_folder, server, login, photos):
    """The pipeline run once with `dvc repro` against the server, and the result committed."""
    root = copy_project(module_folder("team-project"))
    params = tiny_params(load_params(root / "params.yaml"), str(photos))
    params["data"]["manifest"] = None
    write_params(root / "params.yaml", params)
    assert ran_stages(run(root, "dvc", "repro", **login)) == set(STAGES)
    # What the README tells people to commit after a run: dvc.lock, metrics and models/run.json.
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "trained against the team server"], cwd=root, check=True)
    return root


def run_info(project: Path) -> dict:
    return json.loads((project / "models" / "run.json").read_text())


def evaluation_info(project: Path) -> dict:
    """The evaluation run, nested under the training run, that the version was registered from."""
    return json.loads((project / "models" / "evaluation_run.json").read_text())


@pytest.mark.e2e
def test_run_lands_on_the_server_with_every_epoch_in_postgresql(project, server, client):
    info = run_info(project)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(EPOCHS) and run.data.params["model.encoder"] == "resnet18"
    assert len(run.data.tags["data_hash"]) == 64
    for name in HISTORY_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == list(range(1, EPOCHS + 1)), name
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    evaluation_run = client.get_run(evaluation_info(project)["run_id"])
    assert evaluation_run.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert evaluation_run.data.metrics["test_dice"] == pytest.approx(evaluation["test_dice"])

    # The backend store really is PostgreSQL, and the artifacts went through the server into its store.
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="mlflow", passfile=server.root / "pgpass"
    ) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (info["run_id"],)).fetchone()
        steps = conn.execute(
            "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val_dice'", (info["run_id"],)
        ).fetchone()
    assert status == ("FINISHED",) and steps == (EPOCHS,)
    assert [a.path for a in client.list_artifacts(info["run_id"], "checkpoint")] == ["checkpoint/best.pt"]
    stored = list((server.root / "artifacts").rglob("checkpoint/best.pt"))
    assert len(stored) == 1 and info["run_id"] in stored[0].parts
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()


@pytest.mark.e2e
def test_registered_version_alias_predict_and_serve_through_the_server(
    project, server, login, client, photos, tmp_path
):
    info = evaluation_info(project)
    # The pipeline registers the version and decides its alias (the first one is champion).
    decision = json.loads((project / "models" / "registry.json").read_text())
    version = client.get_model_version(MODEL, decision["version"])
    assert version.run_id == info["run_id"] and version.status == "READY"
    assert float(version.tags["test_dice"]) == pytest.approx(
        client.get_run(info["run_id"]).data.metrics["test_dice"], rel=1e-5
    )
    assert decision["alias"] == "champion"
    assert client.get_model_version_by_alias(MODEL, "champion").version == decision["version"]
    client.set_registered_model_alias(MODEL, "team-review", decision["version"])
    assert client.get_model_version_by_alias(MODEL, "team-review").version == decision["version"]

    # predict resolves the alias and downloads the model's files through the tracking server.
    image = sorted((photos / "images").glob("*.jpg"))[0]
    predict = ["-m", "pipeline", "predict", str(image), "--model", f"models:/{MODEL}@team-review"]
    predicted = run(project, sys.executable, *predict, "--out", str(tmp_path / "masks"), **login)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    mask = cv2.imread(str(tmp_path / "masks" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64)

    # Serving loads the version's logged model by its ID (MLflow 3's models:/m-..., the version's
    # source), through the server with the colleague's login (the client fixture holds it in the
    # environment), and answers with predict's mask.
    assert version.source.startswith("models:/m-")
    with served(version.source, server.tracking_uri, tmp_path / "serve.log") as (base, _):
        status, answer = post(f"{base}/invocations", {"inputs": [base64.b64encode(image.read_bytes()).decode()]})
    assert status == 200, answer
    png = np.frombuffer(base64.b64decode(answer["predictions"][0]), np.uint8)
    assert np.array_equal(cv2.imdecode(png, cv2.IMREAD_GRAYSCALE), mask)


@pytest.mark.e2e
def test_colleague_pulls_from_the_remote_and_retrains_nothing(project, server, login, photos, tmp_path):
    remote = tmp_path / "dvc-remote"
    assert run(project, "dvc", "remote", "add", "-d", "team", str(remote)).returncode == 0
    subprocess.run([*GIT, "commit", "-qam", "DVC remote"], cwd=project, check=True)
    pushed = run(project, "dvc", "push")
    assert pushed.returncode == 0, pushed.stderr
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"

    clone = tmp_path / "colleague"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models" / "best.pt").exists()
    pulled = run(clone, "dvc", "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert (clone / "models" / "best.pt").read_bytes() == (project / "models" / "best.pt").read_bytes()

    assert ran_stages(run(clone, "dvc", "repro", **login)) == set()
    assert "Data and pipelines are up to date" in run(clone, "dvc", "status").stdout

    images = sorted((photos / "images").glob("*.jpg"))[:2]
    predicted = run(
        clone,
        sys.executable,
        "-m",
        "pipeline",
        "predict",
        *map(str, images),
        "--model",
        "models/best.pt",
        "--out",
        "masks",
    )
    assert predicted.returncode == 0 and "wrote 2 mask(s)" in predicted.stdout, predicted.stderr[-3000:]


@pytest.mark.e2e
def test_two_queued_experiments_in_parallel_both_complete_on_the_server(project, server, login, client):
    run_queued_experiments(project, ["0.002", "0.004"], **login)
    experiment = client.get_experiment_by_name("human-segmentation").experiment_id
    every_run = client.search_runs([experiment])
    runs = [r for r in every_run if r.data.params.get("train.lr") in ("0.002", "0.004")]
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.002", "0.004"]
    evaluations = {}
    for found in runs:
        assert found.info.status == "FINISHED"
        for name in HISTORY_METRICS:
            assert len(client.get_metric_history(found.info.run_id, name)) == EPOCHS, name
        (evaluation,) = [r for r in every_run if r.data.tags.get("mlflow.parentRunId") == found.info.run_id]
        assert "test_dice" in evaluation.data.metrics
        evaluations[found.info.run_id] = evaluation.info.run_id
    versions = {v.run_id for v in client.search_model_versions(f"name='{MODEL}'")}
    assert set(evaluations.values()) <= versions


def test_unauthenticated_clients_are_refused_and_secrets_are_private(server, login, tmp_path):
    search = f"{server.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=("colleague", "wrong-password-123"), timeout=30).status_code == 401
    account = (login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"])
    assert requests.get(search, auth=account, timeout=30).status_code == 200
    # A colleague's account cannot make accounts: only the admin can.
    made = requests.post(
        f"{server.tracking_uri}/api/2.0/mlflow/users/create",
        json={"username": "intruder", "password": "p" * 16},
        auth=account,
        timeout=30,
    )
    assert made.status_code == 403
    # The pipeline without an account stops before training, in one line that says what to set.
    project = copy_project(tmp_path / "project")
    trained = run(project, sys.executable, "stages/train.py", MLFLOW_TRACKING_URI=server.tracking_uri)
    assert trained.returncode == 2 and "Traceback" not in trained.stderr
    assert "MLFLOW_TRACKING_USERNAME" in trained.stderr.strip().splitlines()[-1]
    assert server.root.stat().st_mode & 0o777 == 0o700
    for secret in SECRETS:
        assert (server.root / secret).stat().st_mode & 0o777 == 0o600, secret

    # status reports the running server; a second start finds it and starts nothing.
    status = server.script("status")
    assert status.returncode == 0 and status.stdout.startswith(f"{server.tracking_uri}: healthy"), status.stdout
    pid = (server.root / "mlflow.pid").read_text()
    again = server.script("start")
    assert again.returncode == 0 and again.stdout.startswith("already running"), again.stderr
    assert (server.root / "mlflow.pid").read_text() == pid


def test_start_without_postgresql_says_how_to_install_it(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "start"],
        env={**os.environ, "PG_BIN": str(tmp_path / "nowhere"), "TRACKING_DIR": str(tmp_path / "tracking")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "PostgreSQL server programs (initdb, pg_ctl) not found" in result.stderr
    assert "apt-get install postgresql" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "tracking").exists()
