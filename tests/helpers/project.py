"""The project under test: its params, copies of it, and running commands in a copy."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from scripts.project_copy import copy_tracked_files

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_ZIP = PROJECT_ROOT.parent / "shared" / "datasets" / "human-segmentation-dataset-master.zip"
FAULTS = PROJECT_ROOT / "tests" / "faults"
STAGES = ("fetch", "split", "train", "evaluate", "register")
# The MLflow store the stages of a project copy write when MLFLOW_TRACKING_URI is unset (pipeline/tracking.py).
TRACKING_DB = "mlflow.db"
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def load_params(path: Path | None = None) -> dict:
    return YAML(typ="safe", pure=True).load((path or PROJECT_ROOT / "params.yaml").read_text())


def write_params(path: Path, params: dict) -> None:
    yaml = YAML()
    with path.open("w") as handle:
        yaml.dump(params, handle)


def set_param(project: Path, section: str, key: str, value: object) -> None:
    params = load_params(project / "params.yaml")
    params[section][key] = value
    write_params(project / "params.yaml", params)


def tiny_params(params: dict, source: str) -> dict:
    """Params for a fast end-to-end run: 64 px, 2 epochs, a small random-init encoder."""
    params["data"].update(source=source, image_size=64)
    params["model"].update(encoder="resnet18", encoder_weights=None)
    params["train"].update(epochs=2, batch_size=16, num_workers=0, device="cpu")
    return params


def copy_project(dest: Path) -> Path:
    """Copy the project as a clean clone would hold it (tracked and unignored files) into ``dest``, as a git repo."""
    copy_tracked_files(PROJECT_ROOT, dest)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def copy_trained(trained: Path, dest: Path) -> Path:
    """A copy of a project that has already run: working tree, git history, DVC cache and state,
    and its MLflow store, whose artifact locations are moved into the copy.

    The copy is what ``trained`` is to DVC (`dvc status` finds it up to date), and its store a
    store of its own: what a test registers or logs there touches neither ``trained`` nor another copy.
    """
    shutil.copytree(trained, dest, symlinks=True, dirs_exist_ok=True)
    if (dest / TRACKING_DB).exists():
        relocate_store(dest / TRACKING_DB, trained, dest)
    return dest


def relocate_store(database: Path, old: Path, new: Path) -> None:
    """Point a copied SQLite MLflow store's absolute paths (artifact locations of experiments,
    runs, logged models and model versions) from ``old`` to ``new``."""
    old, new = old.resolve(), new.resolve()
    prefixes = [(f"{old.as_uri()}/", f"{new.as_uri()}/"), (f"{old}/", f"{new}/")]
    with sqlite3.connect(database) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in connection.execute(f'PRAGMA table_info("{table}")').fetchall():
                if "CHAR" not in column[2].upper() and "TEXT" not in column[2].upper():
                    continue
                for before, after in prefixes:
                    connection.execute(
                        f'UPDATE "{table}" SET "{column[1]}" = replace("{column[1]}", ?, ?) '
                        f'WHERE instr("{column[1]}", ?) > 0',
                        (before, after, before),
                    )
    connection.close()


def environment(project: Path, **extra: str) -> dict[str, str]:
    """This interpreter first on PATH (stage commands call `python`), the copy's code first on
    PYTHONPATH (not whichever checkout the package was installed from), the fault injector
    importable (inert unless its variable is set), and no MLflow settings from outside."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(project), str(FAULTS)])
    env.update(extra)
    return env


# How long one command in a project copy (or a queued sweep) may take before the test calls it
# hung: a guard against hangs, not a speed check, so it leaves the slowest command (the
# multi-class project's first `dvc repro`; pytest's --durations list shows it) room to run
# several times slower on a machine busy with other work.
COMMAND_TIMEOUT_S = 1500


def run(project: Path, *args: str, check: bool = False, **extra: str) -> subprocess.CompletedProcess:
    """Run a command in ``project``; with ``check``, a failure raises with its output."""
    result = subprocess.run(
        args, cwd=project, env=environment(project, **extra), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def ran_stages(result: subprocess.CompletedProcess) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` actually ran (not those it found unchanged)."""
    return set(re.findall(r"Running stage '(\w+)'", result.stdout))


def repro(project: Path, **extra: str) -> set[str]:
    """Run `dvc repro`; return the stages that actually ran."""
    return ran_stages(run(project, "dvc", "repro", check=True, **extra))


def experiment_refs(project: Path) -> list[str]:
    """The experiments DVC has saved in ``project`` (refs/exps/...): a `git for-each-ref`, milliseconds,
    where each `dvc queue status` is a DVC process of a second or more of CPU."""
    listed = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project, capture_output=True, text=True
    )
    # refs/exps/<baseline commit, split after 2 hex digits>/<name>; the queue's own refs live beside them.
    return [ref for ref in listed.stdout.split() if re.match(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/", ref)]


def run_queued_experiments(project: Path, learning_rates: list[str], **extra: str) -> None:
    """A sweep, `dvc exp run --queue -S train.lr=a,b,...`, run by `dvc queue start --jobs 2`; waits for all to succeed.

    The queue's workers inherit ``extra`` (e.g. MLFLOW_TRACKING_URI) from `dvc queue start`.
    """
    before = len(experiment_refs(project))
    queued = run(project, "dvc", "exp", "run", "--queue", "-S", f"train.lr={','.join(learning_rates)}", **extra)
    assert queued.returncode == 0, queued.stderr
    # `dvc queue start` leaves its workers running with its own stdout and stderr: read through
    # pipes (run()), the call would last as long as the last worker, and a worker whose idle
    # monitor died (dvc-task's filesystem broker can fail it with a JSONDecodeError) never exits.
    log = project / ".dvc" / "tmp" / "queue-start.log"
    with log.open("w") as output:
        started = subprocess.run(
            ["dvc", "queue", "start", "--jobs", "2"],
            cwd=project,
            env=environment(project, **extra),
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT_S,
        )
    assert started.returncode == 0, log.read_text()
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    status, asked = "", 0.0
    while time.monotonic() < deadline:
        # Watch for the experiments' refs every second (cheap), and ask DVC itself only when all
        # are saved or every 30 s (a failed experiment saves none): a sweep on a small machine
        # should not share its CPUs with a DVC process every few seconds.
        saved = len(experiment_refs(project)) - before >= len(learning_rates)
        if saved or time.monotonic() - asked >= 30:
            asked = time.monotonic()
            status = run(project, "dvc", "queue", "status").stdout
            # Finished tasks only: between states a task can be listed as neither queued nor running.
            if status.count("Success") + status.count("Failed") >= len(learning_rates):
                break
        time.sleep(1)
    # Shut down the idle workers, also one that would not stop by itself, before the caller goes on.
    run(project, "dvc", "queue", "stop")
    succeeded = status.count("Success") == len(learning_rates) and "Failed" not in status
    assert succeeded, status + run(project, "dvc", "queue", "logs", "-h").stdout
