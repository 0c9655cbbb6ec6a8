"""dvc.yaml must list, for each stage, the code it runs and exactly the params keys it reads."""

import os
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from tests.helpers.imports import code_unit, imported_files
from tests.helpers.project import PROJECT_ROOT

STAGES = YAML(typ="safe", pure=True).load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
# register reads the evaluated model (checkpoint, ONNX, card, scores, per-image scores), the
# evaluation run and the split: the most any stage needs.
MAX_DEPS = 13


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_exactly_the_code_it_imports(stage):
    script = f"stages/{stage}.py"
    assert STAGES[stage]["cmd"] == f"python {script}"
    code_deps = {dep for dep in STAGES[stage]["deps"] if dep.startswith(("pipeline/", "stages/"))}
    assert code_deps == {code_unit(file) for file in imported_files(PROJECT_ROOT / script)} | {script}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_lists_few_dependencies(stage):
    assert len(STAGES[stage]["deps"]) <= MAX_DEPS


def test_evaluate_does_not_read_training_params_and_split_does_not_read_model_params():
    assert not [key for key in STAGES["evaluate"]["params"] if key.startswith(("train.", "split.", "model."))]
    assert not [key for key in STAGES["split"]["params"] if key.startswith(("train.", "model.", "evaluate."))]
    assert "data.source" not in STAGES["split"]["params"]


def test_only_register_reads_the_registered_model_name():
    assert [stage for stage in STAGES if "mlflow.registered_model" in STAGES[stage].get("params", [])] == ["register"]


def test_stages_with_mlflow_side_effects_stay_out_of_the_run_cache():
    def persisted(stage):
        outs = STAGES[stage].get("outs", []) + STAGES[stage].get("metrics", [])
        return any(isinstance(out, dict) and next(iter(out.values())).get("persist") for out in outs)

    assert persisted("train") and persisted("evaluate") and persisted("register")


@pytest.mark.process
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_scripts_answer_help_with_what_they_read_and_write(stage, tmp_path):
    """Run from an empty folder: --help must not read params.yaml or start any work."""
    script = str(PROJECT_ROOT / "stages" / f"{stage}.py")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    helped = subprocess.run([sys.executable, script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "Reads:" in helped.stdout and "Writes:" in helped.stdout
    for out in STAGES[stage].get("outs", []) + STAGES[stage].get("metrics", []):
        assert (next(iter(out)) if isinstance(out, dict) else out) in helped.stdout
    assert list(tmp_path.iterdir()) == []


def test_stages_refuse_unknown_arguments_before_any_work(monkeypatch, capsys):
    from pipeline.core.stage import run_stage

    started = []
    monkeypatch.setattr(sys, "argv", ["stages/train.py", "--epochs", "3"])
    with pytest.raises(SystemExit) as exited:
        run_stage("train", lambda: started.append(True), "Stage train.")
    assert exited.value.code == 2 and started == []
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_scripts_are_thin_and_leave_mlflow_to_the_library(stage):
    import ast

    tree = ast.parse((PROJECT_ROOT / "stages" / f"{stage}.py").read_text())
    (main,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert main.end_lineno - main.lineno + 1 <= 30
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not [name for name in imported if name.split(".")[0] == "mlflow"]
