"""Each evaluation is its own MLflow record, and a registration cut short is never used and is
retired by the next one."""

from __future__ import annotations

import mlflow
import pytest

from pipeline.core import paths
from pipeline.core.classes import PERSON
from pipeline.core.errors import ModelError, TrackingError
from pipeline.core.files import sha256_file, write_json
from pipeline.core.splits import SplitInfo
from pipeline.register import registry
from pipeline.serve.registered import COMPLETE_TAG, registered_artifacts
from pipeline.serve.settings import InferenceSettings
from pipeline.tracking import RunInfo, log_evaluation, training_run_of
from tests.helpers.modelstore import NAME, tiny_checkpoint, tiny_onnx, write_val_scores

SPLIT_INFO = SplitInfo(
    "abc", 32, PERSON, {"train": 2, "val": 2, "test": 2}, {"val": ["a", "b"], "test": ["c", "d"]}, "squash", {}
)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("records", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="bright-lr") as run:
        mlflow.log_params({"train.lr": 0.003})
    return tmp_path, RunInfo(run.info.run_id, experiment)


def evaluated(root, val_scores: dict[str, float] | None = None) -> registry.EvaluatedModel:
    """What evaluate leaves in ``root`` (the working folder), SPLIT_INFO's validation images scored ``val_scores``."""
    val_scores = val_scores or {"a": 0.7, "b": 0.9}
    checkpoint = tiny_checkpoint(root / "best.pt")
    onnx_file = tiny_onnx(checkpoint, InferenceSettings(0.4, False, sha256_file(checkpoint)), root / "model.onnx")
    (root / "card.md").write_text("# card\n")
    mean = sum(val_scores.values()) / len(val_scores)
    write_json(root / "evaluate.json", {"test_dice": 0.5, "threshold": 0.4, "val_dice_deployed": mean})
    write_val_scores(root / paths.VAL_PER_IMAGE, val_scores)
    return registry.EvaluatedModel.read(
        checkpoint, onnx_file, root / "card.md", root / "evaluate.json", root / paths.VAL_PER_IMAGE
    )


def test_every_evaluation_is_its_own_run_under_the_training_run_with_its_settings(store, monkeypatch):
    root, training = store
    first = log_evaluation(training, "records", {"evaluate.tta": False}, {"test_dice": 0.7})
    monkeypatch.setenv("DVC_EXP_NAME", "with-tta")
    second = log_evaluation(training, "records", {"evaluate.tta": True}, {"test_dice": 0.72})
    client = mlflow.MlflowClient()
    runs = {record.run_id: client.get_run(record.run_id) for record in (first, second)}
    assert len(runs) == 2
    assert [run.data.params["evaluate.tta"] for run in runs.values()] == ["False", "True"]
    assert [run.info.run_name for run in runs.values()] == ["bright-lr evaluation", "with-tta evaluation"]
    assert all(training_run_of(record) == training for record in (first, second))
    # The training run keeps its own record: no evaluation writes into it.
    assert client.get_run(training.run_id).data.metrics == {}
    assert client.get_metric_history(second.run_id, "test_dice")[0].value == 0.72
    with pytest.raises(TrackingError, match="is not an evaluation run"):
        training_run_of(training)


def test_an_interrupted_registration_is_never_used_and_the_next_one_retires_it(store, monkeypatch):
    root, training = store
    evaluation = log_evaluation(training, "records", {"evaluate.tta": False}, {})
    model = evaluated(root)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill right after the version was created

    monkeypatch.setattr(registry, "apply_decision", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.register_evaluated(NAME, evaluation.run_id, model, {}, SPLIT_INFO)
    client = mlflow.MlflowClient()
    orphan = client.get_model_version(NAME, "1")
    assert COMPLETE_TAG not in orphan.tags
    with pytest.raises(ModelError, match="version 1 of test-unet was not registered completely.*dvc repro"):
        registered_artifacts(f"models:/{NAME}/1", ("onnx",), root / "download")

    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    decision, retired = registry.register_evaluated(NAME, evaluation.run_id, model, {}, SPLIT_INFO)
    assert retired == ["1"] and (decision.version, decision.alias) == ("2", registry.CHAMPION)
    assert [str(version.version) for version in client.search_model_versions(f"name = '{NAME}'")] == ["2"]
    assert client.get_model_version(NAME, "2").tags[COMPLETE_TAG] == "true"
    assert client.get_model_version(NAME, "2").run_id == evaluation.run_id
    assert registered_artifacts(f"models:/{NAME}@champion", ("onnx",), root / "download")["onnx"].is_file()


def test_retiring_never_touches_another_evaluations_registration(store):
    root, training = store
    ours = log_evaluation(training, "records", {}, {})
    theirs = log_evaluation(training, "records", {}, {})
    model = evaluated(root)
    version = registry.register_model(run_id=theirs.run_id, name=NAME, evaluated=model, tags={})  # still running
    assert registry.retire_incomplete(NAME, ours.run_id) == []
    assert str(mlflow.MlflowClient().get_model_version(NAME, version).version) == version


def test_the_champion_is_paired_with_the_scores_its_evaluation_run_logged(store):
    """The champion's per-image validation Dice comes from the val_per_image.csv its evaluation
    run logged (as the evaluate stage logs it); without that file nothing is compared."""
    root, training = store
    client = mlflow.MlflowClient()

    def registered(val_scores: dict[str, float], *, logged: bool = True) -> registry.AliasDecision:
        model = evaluated(root, val_scores)  # writes metrics/val_per_image.csv, as evaluate does
        evaluation = log_evaluation(training, "records", {}, {}, artifacts=[paths.VAL_PER_IMAGE] if logged else [])
        return registry.register_evaluated(NAME, evaluation.run_id, model, {}, SPLIT_INFO)[0]

    first = registered({"a": 0.25, "b": 0.5}, logged=False)
    assert first.alias == registry.CHAMPION
    second = registered({"a": 0.5, "b": 0.75})
    assert second.alias == registry.CHALLENGER and second.paired_images is None
    assert second.reason.startswith(
        "champion version 1 has no readable per-image validation scores (evaluation/val_per_image.csv of its"
    )
    assert "unet-pipeline promote 2 --reason ..." in second.reason
    registry.promote(NAME, "2", "scored on the same images, by hand")

    third = registered({"a": 0.625, "b": 0.875})
    assert third.alias == registry.CHAMPION and third.champion_version == "2"
    assert third.reason == "better than v2: +0.125 [+0.125, +0.125] on 2 validation images"
    assert (third.improvement, third.improvement_ci_low, third.improvement_ci_high, third.paired_images) == (
        0.125,
        0.125,
        0.125,
        2,
    )
    fourth = registered({"a": 0.75, "b": 0.75})
    assert fourth.alias == registry.CHALLENGER
    assert fourth.reason == "not better than v3: +0.000 [-0.125, +0.125] on 2 validation images"

    version = client.get_model_version(NAME, "4")
    assert version.tags["alias_reason"] == fourth.reason and version.tags["paired_images"] == "2"
    assert float(version.tags["improvement_ci_low"]) == fourth.improvement_ci_low
    assert client.get_run(version.run_id).data.tags["improvement_ci_high"] == version.tags["improvement_ci_high"]
    card, decision = version.description.split("\n## Registry decision\n")
    assert card == "# card\n"
    assert f"Alias **challenger**: {fourth.reason}." in decision
    assert "per validation image, this version's Dice minus champion version 3's" in decision
    assert client.get_registered_model(NAME).aliases == {registry.CHAMPION: 3, registry.CHALLENGER: 4}


def test_a_registered_model_is_found_by_its_logged_model_id_as_the_mlflow_ui_shows_it(store):
    root, training = store
    evaluation = log_evaluation(training, "records", {}, {})
    decision, _ = registry.register_evaluated(NAME, evaluation.run_id, evaluated(root), {}, SPLIT_INFO)
    source = mlflow.MlflowClient().get_model_version(NAME, decision.version).source
    assert source.startswith("models:/m-")  # MLflow 3 registers the logged model by its id
    by_id = registered_artifacts(source, ("onnx", "checkpoint"), root / "by-id")
    by_alias = registered_artifacts(f"models:/{NAME}@champion", ("onnx", "checkpoint"), root / "by-alias")
    for name in ("onnx", "checkpoint"):
        assert sha256_file(by_id[name]) == sha256_file(by_alias[name])
    with pytest.raises(ModelError, match=r"--model models:/m-0+: Logged model with ID 'm-0+' not found"):
        registered_artifacts("models:/m-" + "0" * 32, ("onnx",), root / "missing")
