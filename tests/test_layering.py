"""Which part of the package may import which: the tree is the map, and the map holds."""

import pytest

from tests.helpers.imports import code_unit, direct_imports
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
    "pipeline/tracking.py": {"pipeline/core"},
}
FILES = sorted(path for path in (PROJECT_ROOT / "pipeline").rglob("*.py") if path.name != "__main__.py")


def test_every_part_of_the_package_has_a_rule():
    assert {code_unit(path) for path in FILES} - {"pipeline/__init__.py"} == set(ALLOWED)


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.relative_to(PROJECT_ROOT).as_posix())
def test_imports_follow_the_layers(path):
    unit = code_unit(path)
    allowed = ALLOWED.get(unit, set()) | {unit, "pipeline/__init__.py"}
    reached = {code_unit(file) for file in direct_imports(path)}
    assert reached <= allowed, f"{unit} may not import {sorted(reached - allowed)}"


def test_subpackage_init_files_stay_empty():
    # A re-export would make every stage that touches the subpackage depend on all of it.
    assert [path for path in (PROJECT_ROOT / "pipeline").glob("*/__init__.py") if path.read_text().strip()] == []
