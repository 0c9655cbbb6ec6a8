"""Which part of the package may import which: the tree is the map, and the map holds."""

import subprocess
import sys

import pytest

from tests.helpers.imports import code_unit, direct_imports, validation_only
from tests.helpers.project import PROJECT_ROOT

# Besides itself and pipeline/__init__.py. Steps earlier in the pipeline never reach later ones,
# and serving never needs training.
ALLOWED = {
    "pipeline/core": set(),
    "pipeline/fetch": {"pipeline/core"},
    "pipeline/split": {"pipeline/core"},
    "pipeline/model": {"pipeline/core"},
    "pipeline/train": {"pipeline/core", "pipeline/model"},
    "pipeline/serve": {"pipeline/core", "pipeline/model", "pipeline/tracking.py"},
    "pipeline/evaluate": {"pipeline/core", "pipeline/model", "pipeline/serve"},
    "pipeline/register": {"pipeline/core", "pipeline/serve", "pipeline/tracking.py"},
    "pipeline/tracking.py": {"pipeline/core"},
    # In no stage: a change to it must not rerun register, which would register a new version.
    "pipeline/prune.py": {"pipeline/core", "pipeline/tracking.py"},
}
# The one exception, by file: config validates data.layout and train.loss at start-up against the
# registries filled where the layouts and losses are defined (VALIDATES_WITH), importing those
# two modules inside its validators only (importing config loads neither them nor torch).
FILES = sorted(path for path in (PROJECT_ROOT / "pipeline").rglob("*.py") if path.name != "__main__.py")


def test_every_part_of_the_package_has_a_rule():
    assert {code_unit(path) for path in FILES} - {"pipeline/__init__.py"} == set(ALLOWED)


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.relative_to(PROJECT_ROOT).as_posix())
def test_imports_follow_the_layers(path):
    unit = code_unit(path)
    allowed = ALLOWED.get(unit, set()) | {unit, "pipeline/__init__.py"}
    reached = {code_unit(file) for file in direct_imports(path) - validation_only(path)}
    assert reached <= allowed, f"{unit} may not import {sorted(reached - allowed)}"


def test_config_imports_the_registries_only_when_it_validates():
    modules = ["pipeline.split.layouts", "pipeline.model.losses", "torch"]
    probe = f"import sys, pipeline.core.config; print([m for m in {modules!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_subpackage_init_files_stay_empty():
    # A re-export would make every stage that touches the subpackage depend on all of it.
    assert [path for path in (PROJECT_ROOT / "pipeline").glob("*/__init__.py") if path.read_text().strip()] == []
