from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# A suite started in the background (`make test &`, some CI runners) inherits an ignored SIGINT,
# and so would every stage it starts: the Ctrl-C tests need stages that hear it, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from tests.helpers.project import SHARED_ZIP, load_params  # noqa: E402  (after the variable above)


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    if not SHARED_ZIP.exists():
        pytest.fail(f"reference dataset missing: {SHARED_ZIP} (CI lays ../shared beside the clone)")
    return SHARED_ZIP


@pytest.fixture
def params() -> dict:
    """A fresh copy of the committed params.yaml as plain data."""
    return load_params()


# Fixtures that start a server in its own process: a test that uses one is a process test,
# left out of `make test-fast` with the rest of its kind.
SERVER_FIXTURES = {"server", "serving"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)
