from __future__ import annotations

import fcntl
import os
import shutil
import signal
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# A suite started in the background (`make test &`, some CI runners) inherits an ignored SIGINT,
# and so would every stage it starts: the Ctrl-C tests need stages that hear it, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from tests.helpers.httpserver import FileServer  # noqa: E402  (after the variable above)
from tests.helpers.project import (  # noqa: E402
    SHARED_ZIP,
    STAGES,
    copy_project,
    load_params,
    repro,
    tiny_params,
    write_params,
)


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    if not SHARED_ZIP.exists():
        pytest.fail(f"reference dataset missing: {SHARED_ZIP} (CI lays ../shared beside the clone)")
    return SHARED_ZIP


@pytest.fixture(scope="module")
def module_folder(request, tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """Makes folders for a module's fixtures, removed once the module is done unless one of its
    tests failed: the module-scoped counterpart of tmp_path_retention_policy (pyproject.toml),
    which does the same for each test's tmp_path. Without it every project a module copies
    would stay on disk until the suite ends."""
    made: list[Path] = []
    failures_before = request.session.testsfailed

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failures_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def params() -> dict:
    """A fresh copy of the committed params.yaml as plain data."""
    return load_params()


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``build`` once per run of the suite, however many xdist workers ask.

    Under xdist every worker is a session of its own: the first to ask builds in the run's
    shared temporary folder while the others wait on a lock, then all read the same result.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.mktemp(name, numbered=False)
        build(root)
        return root
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    root, done, failed = shared / name, shared / f"{name}.done", shared / f"{name}.failed"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if failed.exists():
            pytest.fail(f"building {name} failed in another worker:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            try:
                build(root)
            except BaseException:
                failed.write_text(traceback.format_exc())
                raise
            done.touch()
    return root


def train_reference_project(root: Path, dataset: Path) -> None:
    """The tiny reference project (tiny_params: 64 px, 2 epochs, resnet18) run by `dvc repro`, the
    reference dataset downloaded from 127.0.0.1."""
    copy_project(root)
    with FileServer() as server:
        server.add("/master.zip", dataset.read_bytes())
        write_params(root / "params.yaml", tiny_params(load_params(root / "params.yaml"), server.url("/master.zip")))
        assert repro(root) == set(STAGES)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, shared_zip) -> Path:
    """The tiny reference project after `dvc repro`, trained once per run of the suite: read it,
    never change it; a test that changes anything works in its own copy (copy_trained)."""
    return built_once(tmp_path_factory, "trained-project", lambda root: train_reference_project(root, shared_zip))


# Fixtures that start a server in its own process: a test that uses one is a process test,
# left out of `make test-fast` with the rest of its kind.
SERVER_FIXTURES = {"server", "serving"}


# The files that take longest, longest first: xdist hands whole files (--dist loadfile) to the
# workers in collection order (--no-loadscope-reorder), so the long ones start at once and the
# short ones fill in at the end. test_faults builds the trained project while test_team, which
# has no use for it, runs beside it.
SLOW_FIRST = (
    "test_team.py",
    "test_faults.py",
    "test_pipeline_e2e.py",
    "test_multiclass_e2e.py",
    "test_reproducible_outputs.py",
    "test_serving.py",
    "test_hostile.py",
    "test_encoder_weights.py",
    "test_bench.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)
    rank = {name: position for position, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: file order within a file
