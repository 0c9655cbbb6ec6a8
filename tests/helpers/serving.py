"""MLflow's servers on a free loopback port, each in a process group of its own, stopped whatever
the outcome: `mlflow models serve` of a registered model, with torch unimportable (the served
model runs its ONNX export), and `mlflow ui` on a project's tracking store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.project import PROJECT_ROOT, TRACKING_DB, environment

# First on PYTHONPATH, its sitecustomize makes `import torch` fail.
TORCHLESS = PROJECT_ROOT / "tests" / "helpers" / "torchless"


def model_processes(leader: int) -> list[int]:
    """The serving processes: the leader's whole process group (MLflow's server and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == leader:
                found.append(int(entry.name))
        except ProcessLookupError:
            pass
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], ready_url: str, log_path: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Runs ``command`` as the leader of its own process group, output to ``log_path``; yields the
    process once ``ready_url`` answers 200, and ends the whole group afterwards."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone if the server died
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields the server's base URL and its process (the leader of its own process group)."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PYTHONPATH": os.pathsep.join([str(TORCHLESS), str(PROJECT_ROOT)]),
        # MLflow starts `uvicorn` by name: this interpreter's environment must come first on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    hidden = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert hidden.returncode != 0 and "hidden by tests/helpers/torchless" in hidden.stderr
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    base = f"http://127.0.0.1:{port}"
    with running([*command, "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env, f"{base}/ping", log_path) as process:
        yield base, process


@contextlib.contextmanager
def mlflow_ui(project: Path, log_path: Path) -> Iterator[str]:
    """`mlflow ui --backend-store-uri sqlite:///mlflow.db` in ``project``, as the README runs it;
    yields its base URL."""
    port = free_port()
    # One worker and no job runner (a pool of processes for GenAI jobs the pipeline has none of).
    env = environment(project, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{TRACKING_DB}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    with running(command, env, f"{base}/health", log_path, cwd=project):
        yield base
