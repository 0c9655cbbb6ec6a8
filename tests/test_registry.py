import math
from dataclasses import replace

import mlflow
import pytest

from pipeline.core.classes import PERSON
from pipeline.core.errors import ModelError, TrackingError
from pipeline.core.files import sha256_file, write_json
from pipeline.core.splits import SplitInfo
from pipeline.register.registry import (
    CHALLENGER,
    CHAMPION,
    SELECTION_METRIC,
    Contender,
    EvaluatedModel,
    apply_decision,
    current_champion,
    decide_alias,
    identify_split,
    parse_version,
    promote,
    register_evaluated,
    version_tags,
)
from pipeline.serve.settings import InferenceSettings
from tests.helpers.modelstore import NAME, register, tiny_checkpoint, tiny_onnx, use_store
from tests.helpers.project import PROJECT_ROOT

SPLIT_INFO = SplitInfo(
    "abc", 64, PERSON, {"train": 1, "val": 1, "test": 2}, {"test": ["p1", "p2"], "val": ["p3"], "train": ["p4"]}
)


def test_first_model_becomes_champion():
    decision = decide_alias(Contender("1", 0.8, "set-a"), None)
    assert (decision.alias, decision.champion_version) == (CHAMPION, None)
    assert decision.reason == "there was no champion yet"


@pytest.mark.parametrize(("dice", "alias"), [(0.81, CHAMPION), (0.80, CHALLENGER), (0.79, CHALLENGER)])
def test_champion_moves_only_on_a_strictly_higher_validation_dice(dice, alias):
    decision = decide_alias(Contender("3", dice, "set-a"), Contender("2", 0.80, "set-a"))
    assert decision.alias == alias and decision.metric == SELECTION_METRIC == "val_dice_deployed"
    assert (decision.champion_version, decision.champion_val_dice_deployed) == ("2", 0.80)
    assert "validation Dice" in decision.reason and "champion version 2 (0.8000)" in decision.reason


def test_scores_on_other_validation_data_are_not_compared():
    decision = decide_alias(Contender("3", 0.99, "set-b"), Contender("2", 0.5, "set-a"))
    assert decision.alias == CHALLENGER and "validated on other data" in decision.reason
    assert "unet-pipeline promote 3" in decision.reason
    untagged = decide_alias(Contender("3", 0.99, "set-b"), Contender("2", math.nan, ""))
    assert untagged.alias == CHALLENGER and "validation set unknown" in untagged.reason


@pytest.mark.parametrize("split", ["val", "test"])
def test_split_id_follows_data_size_and_membership(split):
    base = identify_split(SPLIT_INFO, split)
    assert identify_split(replace(SPLIT_INFO, ids={**SPLIT_INFO.ids, "train": ["other"]}), split) == base
    assert identify_split(replace(SPLIT_INFO, ids={**SPLIT_INFO.ids, split: ["p9"]}), split) != base
    assert identify_split(replace(SPLIT_INFO, image_size=320), split) != base
    assert identify_split(replace(SPLIT_INFO, data_hash="def"), split) != base
    assert identify_split(SPLIT_INFO, "val") != identify_split(SPLIT_INFO, "test")


def test_version_tags_keep_full_precision_and_provenance():
    tags = version_tags(
        {"data_hash": "abc", "git_commit": "1234"},
        SPLIT_INFO,
        {"test_dice": 0.123456789012, "test_loss": 0.5, "threshold": 0.45, "val_dice_deployed": 0.9},
        0.9,
    )
    assert tags == {
        "data_hash": "abc",
        "git_commit": "1234",
        "val_set": identify_split(SPLIT_INFO, "val"),
        "test_set": identify_split(SPLIT_INFO, "test"),
        "val_dice_deployed": "0.9",
        "test_dice": "0.123456789012",
        "test_loss": "0.5",
        "threshold": "0.45",
    }


def test_a_test_score_never_reaches_a_decision():
    """Whatever the test tags say, only validation Dice on the same validation set is compared."""
    champion = Contender("1", 0.70, "v")
    assert decide_alias(Contender("2", 0.69, "v"), champion).alias == CHALLENGER
    assert not {"test_dice", "test_set"} & set(Contender.__dataclass_fields__)


def test_registered_versions_get_tags_card_and_aliases(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    client = mlflow.MlflowClient
    decisions = []
    # The test tags say the opposite of the validation scores: they must not matter.
    for dice, test_dice in ((0.7, 0.9), (0.6, 0.99), (0.75, 0.1)):
        tags = {"val_dice_deployed": repr(dice), "val_set": "s", "test_dice": repr(test_dice), "test_set": "t"}
        run_id, version = register(tmp_path, checkpoint, threshold=0.5, tags=tags)
        decision = decide_alias(Contender(version, dice, "s"), current_champion(NAME))
        apply_decision(NAME, run_id, decision)
        decisions.append((version, decision.alias))
    assert decisions == [("1", CHAMPION), ("2", CHALLENGER), ("3", CHAMPION)]
    assert current_champion(NAME) == Contender("3", 0.75, "s")
    registered = client().get_registered_model(NAME)
    assert registered.aliases == {CHAMPION: 3, CHALLENGER: 2}
    version = client().get_model_version(NAME, "2")
    assert (
        version.tags["alias_decision"] == CHALLENGER
        and "does not beat champion version 1" in version.tags["alias_reason"]
    )
    assert version.description == "# card\n"
    assert version.tags["alias_metric"] == "val_dice_deployed"
    assert client().get_run(version.run_id).data.tags["alias_decision"] == CHALLENGER
    assert mlflow.models.get_model_info(f"models:/{NAME}/2").signature.outputs is not None


def test_promote_moves_the_champion_and_records_why_and_from_which(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    client = mlflow.MlflowClient
    for dice in (0.8, 0.7):
        run_id, version = register(
            tmp_path, checkpoint, threshold=0.5, tags={"val_dice_deployed": repr(dice), "val_set": "s"}
        )
        apply_decision(NAME, run_id, decide_alias(Contender(version, dice, "s"), current_champion(NAME)))
    register(tmp_path, checkpoint, threshold=0.5)  # version 3: registered, never evaluated
    assert client().get_registered_model(NAME).aliases == {CHAMPION: 1, CHALLENGER: 2}

    with pytest.raises(TrackingError, match="is a version of 'other-model', not of 'test-unet'"):
        promote(NAME, "models:/other-model/2", "looks better")
    with pytest.raises(TrackingError, match="has no version 9"):
        promote(NAME, "9", "looks better")
    with pytest.raises(TrackingError, match="version 3 has no evaluation"):
        promote(NAME, "3", "looks better")
    with pytest.raises(TrackingError, match="--reason"):
        promote(NAME, "2", "  ")
    assert client().get_registered_model(NAME).aliases == {CHAMPION: 1, CHALLENGER: 2}

    assert promote(NAME, f"models:/{NAME}/2", "fewer false positives on our photos") == "1"
    assert client().get_registered_model(NAME).aliases == {CHAMPION: 2}
    tags = client().get_model_version(NAME, "2").tags
    assert tags["promoted_reason"] == "fewer false positives on our photos" and tags["promoted_from"] == "1"
    assert tags["alias_decision"] == CHAMPION and tags["alias_metric"] == "manual"
    with pytest.raises(TrackingError, match="already the champion"):
        promote(NAME, "2", "again")


@pytest.mark.parametrize(("reference", "version"), [("3", "3"), ("test-unet/3", "3"), ("models:/test-unet/12", "12")])
def test_version_references(reference, version):
    assert parse_version(reference, NAME) == version


def test_promote_command_line_refuses_with_one_line(tmp_path, monkeypatch, capsys):
    from pipeline.__main__ import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["promote", "models:/someone-else/1", "--reason", "x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: VERSION 'models:/someone-else/1' is a version of 'someone-else', not of "
        "'human-segmentation-unet' (mlflow.registered_model); promote only moves this project's champion"
    )


def evaluated_files(root, *, exported_from=None, metrics=None):
    """What the evaluate stage leaves for register: checkpoint, its ONNX export, card, metrics."""
    checkpoint = tiny_checkpoint(root / "best.pt")
    source = exported_from or checkpoint
    onnx_file = tiny_onnx(source, InferenceSettings(0.4, False, sha256_file(source)), root / "model.onnx")
    (root / "card.md").write_text("# card\n")
    write_json(
        root / "evaluate.json",
        {"test_dice": 0.5, "threshold": 0.4, "val_dice_deployed": 0.8} if metrics is None else metrics,
    )
    return dict(checkpoint=checkpoint, onnx_model=onnx_file, card=root / "card.md", metrics_file=root / "evaluate.json")


def test_register_reads_what_evaluate_wrote_and_registers_one_version(tmp_path):
    evaluated = EvaluatedModel.read(**evaluated_files(tmp_path))
    assert evaluated.val_dice == 0.8
    use_store(tmp_path)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("tests").experiment_id) as run:
        pass
    decision, retired = register_evaluated(NAME, run.info.run_id, evaluated, {"git_commit": "abc123"}, SPLIT_INFO)
    assert retired == []
    assert (decision.version, decision.alias) == ("1", CHAMPION)
    version = mlflow.MlflowClient().get_model_version(NAME, "1")
    assert version.tags["val_dice_deployed"] == "0.8" and version.tags["threshold"] == "0.4"
    assert version.tags["git_commit"] == "abc123" and version.tags["val_set"] == identify_split(SPLIT_INFO, "val")
    record = decision.record(NAME)
    assert (
        record["registered_model"] == NAME
        and record["alias"] == CHAMPION
        and "validation Dice" in record["metric_description"]
    )
    # The served model's settings come from the ONNX file alone: the pyfunc carries no copy of them.
    assert not mlflow.models.get_model_info(f"models:/{NAME}/1").flavors["python_function"].get("config")


def test_register_refuses_an_export_of_another_checkpoint(tmp_path):
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(ModelError, match=r"model\.onnx was not exported from .*best\.pt; run the evaluate stage"):
        EvaluatedModel.read(**evaluated_files(tmp_path, exported_from=other))


@pytest.mark.parametrize("metrics", [{"test_dice": 0.5}, {"val_dice_deployed": "high"}, [1, 2]])
def test_register_refuses_metrics_without_the_selection_score(tmp_path, metrics):
    with pytest.raises(ModelError, match="evaluate.json: no number 'val_dice_deployed'"):
        EvaluatedModel.read(**evaluated_files(tmp_path, metrics=metrics))


def test_register_names_a_missing_file(tmp_path):
    files = evaluated_files(tmp_path)
    files["card"].unlink()
    with pytest.raises(ModelError, match=r"card\.md: missing; run the evaluate stage"):
        EvaluatedModel.read(**files)
