"""dvc.yaml must list, for each stage, the code it runs and exactly the params keys it reads."""

import ast
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import PROJECT_ROOT

STAGES = YAML(typ="safe", pure=True).load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """Every pipeline/*.py that ``path`` imports, directly or through other pipeline modules."""
    seen: set[str] = set()
    pending = [path]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    names = [f"pipeline.{node.module}"] if node.module else [f"pipeline.{a.name}" for a in node.names]
                elif node.module and node.module.split(".")[0] == "pipeline":
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "pipeline"]
            for name in names:
                candidate = PROJECT_ROOT / (name.replace(".", "/") + ".py")
                relative = candidate.relative_to(PROJECT_ROOT).as_posix()
                if candidate.exists() and relative not in seen:
                    seen.add(relative)
                    pending.append(candidate)
    return seen | {"pipeline/__init__.py"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_exactly_the_code_it_imports(stage):
    script = f"stages/{stage}.py"
    assert STAGES[stage]["cmd"] == f"python {script}"
    code_deps = {dep for dep in STAGES[stage]["deps"] if dep.startswith(("pipeline/", "stages/"))}
    assert code_deps == imported_modules(PROJECT_ROOT / script) | {script}


def test_evaluate_does_not_read_training_params_and_split_does_not_read_model_params():
    assert not [key for key in STAGES["evaluate"]["params"] if key.startswith(("train.", "split.", "model."))]
    assert not [key for key in STAGES["split"]["params"] if key.startswith(("train.", "model.", "evaluate."))]
    assert "data.source" not in STAGES["split"]["params"]


def test_stages_with_mlflow_side_effects_stay_out_of_the_run_cache():
    def persisted(stage):
        outs = STAGES[stage].get("outs", []) + STAGES[stage].get("metrics", [])
        return any(isinstance(out, dict) and next(iter(out.values())).get("persist") for out in outs)

    assert persisted("train") and persisted("evaluate")
