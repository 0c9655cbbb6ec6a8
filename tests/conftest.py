from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

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
