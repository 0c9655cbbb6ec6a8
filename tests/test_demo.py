"""`make demo`'s summary of the MLflow store (scripts/demo.py), on a store the pipeline's own tracking code writes."""

import importlib.util
import sys

from pipeline.core.config import parse_config
from pipeline.register.registry import Contender, apply_decision, decide_alias
from pipeline.tracking import RunInfo, connect, log_evaluation, train_tracked
from tests.helpers.modelstore import FakeSession
from tests.helpers.project import PROJECT_ROOT


def load_demo(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "scripts"))  # where demo.py finds project_copy
    spec = importlib.util.spec_from_file_location("demo", PROJECT_ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_show_mlflow_prints_each_training_run_with_its_latest_evaluation_and_the_registered_versions(
    params, tmp_path, monkeypatch, capsys
):
    import mlflow

    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    best = tmp_path / "best.pt"
    best.write_bytes(b"weights")
    experiment_id = connect("demo")
    trained = {}
    for name, lr in (("first", 0.003), ("lower-lr", 0.001), ("unevaluated", 0.01)):
        monkeypatch.setenv("DVC_EXP_NAME", name)  # what names the run
        params["train"]["lr"] = lr
        run_id, _ = train_tracked(parse_config(params), FakeSession(best), experiment_id, {"data_pairs_used": 96})
        trained[name] = RunInfo(run_id, experiment_id)
    log_evaluation(trained["first"], "demo", {}, {"val_dice_deployed": 0.5, "test_dice": 0.4})
    evaluations = [
        log_evaluation(trained["first"], "demo", {}, {"val_dice_deployed": 0.81, "test_dice": 0.79}),
        log_evaluation(trained["lower-lr"], "demo", {}, {"val_dice_deployed": 0.7, "test_dice": 0.72}),
    ]
    client = mlflow.MlflowClient()
    client.create_registered_model("shapes")
    first = Contender("1", 0.81, "val-set", {"a": 0.9, "b": 0.72})
    lower = Contender("2", 0.7, "val-set", {"a": 0.75, "b": 0.65})
    for evaluation, decision in zip(evaluations, (decide_alias(first, None), decide_alias(lower, first)), strict=True):
        client.create_model_version("shapes", f"runs:/{evaluation.run_id}/model", evaluation.run_id)
        apply_decision("shapes", evaluation.run_id, decision)
    capsys.readouterr()

    load_demo(monkeypatch).show_mlflow(store, "demo", "shapes")
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        "run first FINISHED lr 0.003 val_dice_deployed 0.810 test_dice 0.790 pairs used 96",
        "run lower-lr FINISHED lr 0.001 val_dice_deployed 0.700 test_dice 0.720 pairs used 96",
        "run unevaluated FINISHED lr 0.01 val_dice_deployed nan test_dice nan pairs used 96",
        "registered shapes version 1 from the evaluation of run first: champion (there was no champion yet)",
        "registered shapes version 2 from the evaluation of run lower-lr: challenger "
        "(not better than v1: -0.110 [-0.150, -0.070] on 2 validation images)",
    ]
