"""Team scale, with the real components: a tracking server on PostgreSQL, a DVC remote, a colleague's clone.

The module starts PostgreSQL and `mlflow server` (with logins) on free 127.0.0.1 ports through
scripts/tracking_server.py (the script `make tracking-server` runs) and stops both at the
end, pass or fail. The pipeline runs under a colleague's account, created as the README says.
A small synthetic dataset keeps the pipeline runs to seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import mlflow
import pytest
import requests

from tests.helpers.datasets import make_dataset
from tests.helpers.project import (
    GIT,
    PROJECT_ROOT,
    copy_project,
    environment,
    load_params,
    ran_stages,
    run,
    run_queued_experiments,
    tiny_params,
    write_params,
)
from tests.helpers.serving import free_port

SCRIPT = PROJECT_ROOT / "scripts" / "tracking_server.py"
MODEL = "human-segmentation-unet"
EPOCHS = 2
HISTORY_METRICS = ("train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds")


pytestmark = pytest.mark.process


def load_server_script():
    spec = importlib.util.spec_from_file_location("tracking_server", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def server():
    """PostgreSQL + `mlflow server` on loopback; yields the script's state (tracking URI, ports, password file)."""
    script = load_server_script()
    try:
        script.postgres_bin()
    except script.ServerError as exc:
        pytest.skip(f"the team tests need PostgreSQL: {exc}")
    # Not under pytest's tmp folder: as root, PostgreSQL runs as the postgres user, which must reach it.
    folder = Path(tempfile.mkdtemp(prefix="unet-team-server-"))
    folder.chmod(0o755)
    command = [sys.executable, str(SCRIPT), "--dir", str(folder / "tracking")]
    ports = ["--port", str(free_port()), "--pg-port", str(free_port()), "--workers", "1"]
    try:
        started = subprocess.run([*command, "start", *ports], capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stderr
        state = script.State.load(folder / "tracking" / "server.json")
        yield state
    finally:
        stopped = subprocess.run([*command, "stop"], capture_output=True, text=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not port_open(int(state.tracking_uri.rsplit(":", 1)[1])) and not port_open(state.pg_port)


@pytest.fixture(scope="module")
def login(server) -> dict[str, str]:
    """A colleague's account, made with `tracking_server.py add-user`: the environment MLflow clients need."""
    made = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(Path(server.pgpass).parent), "add-user", "colleague"],
        capture_output=True,
        text=True,
        timeout=60,
    )
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
def photos(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("photos"), count=24, size=64, seed=3)


@pytest.fixture(scope="module")
def project(tmp_path_factory, server, login, photos):
    """The pipeline run once with `dvc repro` against the server, and the result committed."""
    root = copy_project(tmp_path_factory.mktemp("team-project"))
    params = tiny_params(load_params(root / "params.yaml"), str(photos))
    params["data"]["manifest"] = None
    write_params(root / "params.yaml", params)
    assert ran_stages(run(root, "dvc", "repro", **login)) == {
        "fetch",
        "split",
        "train",
        "evaluate",
    }
    # What the README tells people to commit after a run: dvc.lock, metrics and models/run.json.
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "trained against the team server"], cwd=root, check=True)
    return root


def run_info(project: Path) -> dict:
    return json.loads((project / "models" / "run.json").read_text())


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
    assert run.data.metrics["test_dice"] == pytest.approx(evaluation["test_dice"])

    # The backend store really is PostgreSQL, and the artifacts went through the server into its store.
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="mlflow", passfile=server.pgpass
    ) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (info["run_id"],)).fetchone()
        steps = conn.execute(
            "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val_dice'", (info["run_id"],)
        ).fetchone()
    assert status == ("FINISHED",) and steps == (EPOCHS,)
    assert [a.path for a in client.list_artifacts(info["run_id"], "checkpoint")] == ["checkpoint/best.pt"]
    stored = list(Path(server.artifacts_destination).rglob("checkpoint/best.pt"))
    assert len(stored) == 1 and info["run_id"] in stored[0].parts
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()


@pytest.mark.e2e
def test_registered_version_alias_predict_and_serve_through_the_server(
    project, server, login, client, photos, tmp_path
):
    info = run_info(project)
    # The evaluate stage registers the version and decides its alias (the first one is champion).
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

    images = sorted((photos / "images").glob("*.jpg"))[:2]
    predicted = run(
        project,
        sys.executable,
        "-m",
        "pipeline",
        "predict",
        *map(str, images),
        "--model",
        f"models:/{MODEL}@team-review",
        "--out",
        str(tmp_path / "masks"),
        **login,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    for image in images:
        assert cv2.imread(str(tmp_path / "masks" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED).shape == (64, 64)

    # Serving resolves the alias and downloads the model through the tracking server.
    port = free_port()
    serving = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}@team-review",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=environment(project, **login),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and serving.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            os.killpg(serving.pid, signal.SIGKILL)
            pytest.fail(f"mlflow models serve never answered /ping:\n{serving.communicate()[0][-3000:]}")
    finally:
        if serving.poll() is None:
            os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(timeout=60)


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
    runs = [r for r in client.search_runs([experiment]) if r.data.params["train.lr"] in ("0.002", "0.004")]
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.002", "0.004"]
    for found in runs:
        assert found.info.status == "FINISHED"
        for name in HISTORY_METRICS:
            assert len(client.get_metric_history(found.info.run_id, name)) == EPOCHS, name
        assert "test_dice" in found.data.metrics
    versions = {v.run_id for v in client.search_model_versions(f"name='{MODEL}'")}
    assert {r.info.run_id for r in runs} <= versions


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
    folder = Path(server.pgpass).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    for secret in (folder / "admin-password", folder / "pgpass", folder / "flask-secret"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret


def test_start_without_postgresql_says_how_to_install_it(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "start", "--dir", str(tmp_path / "tracking")],
        env={**os.environ, "PG_BIN": str(tmp_path / "nowhere")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "PostgreSQL server programs (initdb, pg_ctl) not found" in result.stderr
    assert "apt-get install postgresql" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "tracking" / "pgdata").exists()
