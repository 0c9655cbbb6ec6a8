"""Identical params and data give identical bytes: the tiny pipeline, run in two copies of the
project, writes the same split, report, checkpoint, ONNX model (its inference settings included),
test metrics and their bootstrap intervals (seeded) and per-image scores, so DVC sees an
unchanged output and a colleague's rerun matches the team's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.project import STAGES, copy_project, load_params, repro, tiny_params, write_params

pytestmark = pytest.mark.e2e

# Run identities (models/run.json, the model card's run line) and timings (metrics/history.csv's
# epoch_seconds) are what may differ between two runs, and none of these files holds one.
IDENTICAL = (
    "data/split",
    "data/report.json",
    "models/best.pt",
    "models/model.onnx",
    "metrics/evaluate.json",
    "metrics/evaluate_details.json",
    "metrics/test_per_image.csv",
)


def run_copy(root: Path) -> Path:
    copy_project(root)
    params = tiny_params(load_params(root / "params.yaml"), "synthetic:48")
    params["data"]["manifest"] = None
    write_params(root / "params.yaml", params)
    assert repro(root) == set(STAGES)
    return root


def files_of(root: Path, output: str) -> dict[str, bytes]:
    path = root / output
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {file.relative_to(root).as_posix(): file.read_bytes() for file in files if file.is_file()}


@pytest.fixture(scope="module")
def copies(module_folder) -> tuple[Path, Path]:
    return run_copy(module_folder("first")), run_copy(module_folder("second"))


@pytest.mark.parametrize("output", IDENTICAL)
def test_identical_runs_write_identical_bytes(copies, output):
    first, second = (files_of(root, output) for root in copies)
    assert first, f"{output} was not written"
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_only_the_run_identity_tells_the_runs_apart(copies):
    first, second = (files_of(root, "models/run.json") for root in copies)
    assert first != second  # two MLflow stores, two run ids: the one output allowed to differ
