import math
import re
from dataclasses import replace

import mlflow
import numpy as np
import pytest

from pipeline.core.classes import PERSON
from pipeline.core.errors import ModelError, TrackingError
from pipeline.core.files import sha256_file, write_json
from pipeline.core.intervals import bootstrap_mean
from pipeline.core.splits import SplitInfo
from pipeline.register.registry import (
    CHALLENGER,
    CHAMPION,
    SELECTION_METRIC,
    VAL_PER_IMAGE_ARTIFACT,
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
from tests.helpers.modelstore import NAME, PAIRED, register, tiny_checkpoint, tiny_onnx, use_store, write_val_scores
from tests.helpers.project import PROJECT_ROOT

SPLIT_INFO = SplitInfo(
    "abc",
    64,
    PERSON,
    {"train": 1, "val": 1, "test": 2},
    {"test": ["p1", "p2"], "val": ["p3"], "train": ["p4"]},
    "squash",
    {},
)


# 58 validation images, as the reference split has; their ids in no particular order.
IDS = [f"img{index}" for index in np.random.default_rng(5).permutation(58)]
CHAMPION_SCORES = dict(zip(IDS, np.random.default_rng(6).uniform(0.5, 0.8, size=58).tolist(), strict=True))


def rerun(shift: float, noise: float = 0.03) -> dict[str, float]:
    """The champion's per-image scores moved by ``shift`` plus per-image noise of mean zero, listed
    in another order."""
    jitter = np.random.default_rng(7).normal(0, noise, size=58)
    jitter -= jitter.mean()
    return {id_: CHAMPION_SCORES[id_] + shift + float(delta) for id_, delta in sorted(zip(IDS, jitter, strict=True))}


def contender(version: str, scores: dict[str, float] | None, val_set: str = "set-a") -> Contender:
    return Contender(version, float(np.mean(list(scores.values()))) if scores else math.nan, val_set, scores)


def test_first_model_becomes_champion():
    decision = decide_alias(contender("1", CHAMPION_SCORES), None)
    assert (decision.alias, decision.champion_version) == (CHAMPION, None)
    assert decision.reason == "there was no champion yet"
    assert (decision.improvement, decision.improvement_ci_low, decision.paired_images) == (None, None, None)
    assert decision.comparison_tags() == {}


def test_noise_alone_leaves_the_champion_where_it_is():
    challenger = rerun(0.0)
    decision = decide_alias(contender("3", challenger), contender("2", CHAMPION_SCORES))
    assert decision.alias == CHALLENGER and decision.metric == SELECTION_METRIC == "val_dice_deployed"
    # Paired by id, whatever order either file lists the images in.
    interval = bootstrap_mean([challenger[id_] - CHAMPION_SCORES[id_] for id_ in sorted(IDS)])
    assert interval.low < 0 < interval.high
    assert decision.reason == f"not better than v2: {interval.describe_signed()} on 58 validation images"
    assert re.fullmatch(rf"not better than v2: {PAIRED}", decision.reason)
    assert (decision.improvement, decision.improvement_ci_low, decision.improvement_ci_high) == (
        interval.mean,
        interval.low,
        interval.high,
    )
    assert decision.paired_images == 58 and decision.champion_version == "2"
    assert decision.comparison_tags() == {
        "improvement": repr(interval.mean),
        "improvement_ci_low": repr(interval.low),
        "improvement_ci_high": repr(interval.high),
        "paired_images": "58",
    }


def test_a_higher_mean_within_the_noise_is_not_an_improvement():
    """What "strictly higher wins" would promote: a mean above the champion's, an interval reaching below zero."""
    challenger = rerun(0.004)
    decision = decide_alias(contender("3", challenger), contender("2", CHAMPION_SCORES))
    assert contender("3", challenger).val_dice > contender("2", CHAMPION_SCORES).val_dice
    assert decision.alias == CHALLENGER and decision.improvement > 0 > decision.improvement_ci_low


def test_a_clear_improvement_takes_the_champion_alias():
    decision = decide_alias(contender("3", rerun(0.05)), contender("2", CHAMPION_SCORES))
    assert decision.alias == CHAMPION and re.fullmatch(rf"better than v2: {PAIRED}", decision.reason)
    assert decision.reason.startswith("better than v2: +0.05") and 0 < decision.improvement_ci_low < 0.05
    assert decision.improvement == pytest.approx(0.05)


def test_the_same_scores_are_no_improvement():
    decision = decide_alias(contender("3", dict(reversed(CHAMPION_SCORES.items()))), contender("2", CHAMPION_SCORES))
    assert decision.alias == CHALLENGER
    assert decision.reason == "not better than v2: +0.000 [+0.000, +0.000] on 58 validation images"


def test_scores_on_other_validation_data_are_not_compared():
    decision = decide_alias(contender("3", rerun(0.3), "set-b"), contender("2", CHAMPION_SCORES))
    assert decision.alias == CHALLENGER and "validated on other data" in decision.reason
    assert "unet-pipeline promote 3 --reason" in decision.reason and decision.paired_images is None
    untagged = decide_alias(contender("3", rerun(0.3), "set-b"), Contender("2", math.nan, "", CHAMPION_SCORES))
    assert untagged.alias == CHALLENGER and "validation set unknown" in untagged.reason


@pytest.mark.parametrize(
    ("scores", "found"),
    [
        ({**rerun(0.3), "img-extra": 0.9}, "(58 images, now 59, 58 in both)"),
        (dict(list(rerun(0.3).items())[1:]), "(58 images, now 57, 57 in both)"),
        ({f"other{index}": 0.99 for index in range(58)}, "(58 images, now 58, 0 in both)"),
    ],
)
def test_other_validation_images_are_not_paired(scores, found):
    decision = decide_alias(contender("3", scores), contender("2", CHAMPION_SCORES))
    assert decision.alias == CHALLENGER and decision.paired_images is None and decision.improvement is None
    assert decision.reason == (
        f"champion version 2 was scored on other validation images {found}, so nothing was compared; "
        "promote this one by hand (`unet-pipeline promote 3 --reason ...`) if it should serve"
    )


def test_a_champion_without_per_image_scores_is_not_compared():
    decision = decide_alias(contender("3", rerun(0.3)), Contender("2", 0.5, "set-a", None))
    assert decision.alias == CHALLENGER and decision.paired_images is None
    assert decision.reason == (
        f"champion version 2 has no readable per-image validation scores ({VAL_PER_IMAGE_ARTIFACT} of its "
        "evaluation run) to pair with, so nothing was compared; promote this one by hand "
        "(`unet-pipeline promote 3 --reason ...`) if it should serve"
    )
    assert VAL_PER_IMAGE_ARTIFACT == "evaluation/val_per_image.csv"


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
    """Whatever the test tags say, only validation Dice on the same validation images is compared."""
    assert decide_alias(contender("2", rerun(-0.01)), contender("1", CHAMPION_SCORES)).alias == CHALLENGER
    assert not {"test_dice", "test_set"} & set(Contender.__dataclass_fields__)


def test_registered_versions_get_tags_card_and_aliases(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    client = mlflow.MlflowClient
    decisions = []
    # The test tags say the opposite of the validation scores: they must not matter.
    for scores, test_dice in ((CHAMPION_SCORES, 0.9), (rerun(0.0), 0.99), (rerun(0.1), 0.1)):
        dice = float(np.mean(list(scores.values())))
        tags = {"val_dice_deployed": repr(dice), "val_set": "s", "test_dice": repr(test_dice), "test_set": "t"}
        run_id, version = register(tmp_path, checkpoint, threshold=0.5, tags=tags, val_scores=scores)
        decision = decide_alias(contender(version, scores, "s"), current_champion(NAME))
        apply_decision(NAME, run_id, decision)
        decisions.append((version, decision.alias))
    assert decisions == [("1", CHAMPION), ("2", CHALLENGER), ("3", CHAMPION)]
    # The champion's per-image scores come back from its run, as written (full precision).
    assert current_champion(NAME) == contender("3", rerun(0.1), "s")
    registered = client().get_registered_model(NAME)
    assert registered.aliases == {CHAMPION: 3, CHALLENGER: 2}
    version = client().get_model_version(NAME, "2")
    assert version.tags["alias_decision"] == CHALLENGER
    assert re.fullmatch(rf"not better than v1: {PAIRED}", version.tags["alias_reason"])
    assert version.description == "# card\n"
    assert version.tags["alias_metric"] == "val_dice_deployed" and version.tags["paired_images"] == "58"
    assert float(version.tags["improvement_ci_low"]) < 0 < float(version.tags["improvement_ci_high"])
    run_tags = client().get_run(version.run_id).data.tags
    assert run_tags["alias_decision"] == CHALLENGER and run_tags["improvement"] == version.tags["improvement"]
    assert mlflow.models.get_model_info(f"models:/{NAME}/2").signature.outputs is not None


def test_promote_moves_the_champion_and_records_why_and_from_which(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    client = mlflow.MlflowClient
    for scores in (CHAMPION_SCORES, rerun(-0.1)):
        dice = float(np.mean(list(scores.values())))
        run_id, version = register(
            tmp_path, checkpoint, threshold=0.5, tags={"val_dice_deployed": repr(dice), "val_set": "s"}
        )
        apply_decision(NAME, run_id, decide_alias(contender(version, scores, "s"), current_champion(NAME)))
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
    """What the evaluate stage leaves for register: checkpoint, its ONNX export, card, metrics,
    per-image validation Dice (SPLIT_INFO's one validation image)."""
    checkpoint = tiny_checkpoint(root / "best.pt")
    source = exported_from or checkpoint
    onnx_file = tiny_onnx(source, InferenceSettings(0.4, False, sha256_file(source)), root / "model.onnx")
    (root / "card.md").write_text("# card\n")
    write_json(
        root / "evaluate.json",
        {"test_dice": 0.5, "threshold": 0.4, "val_dice_deployed": 0.8} if metrics is None else metrics,
    )
    return dict(
        checkpoint=checkpoint,
        onnx_model=onnx_file,
        card=root / "card.md",
        metrics_file=root / "evaluate.json",
        val_per_image=write_val_scores(root / "val_per_image.csv", {"p3": 0.8}),
    )


def test_register_reads_what_evaluate_wrote_and_registers_one_version(tmp_path):
    evaluated = EvaluatedModel.read(**evaluated_files(tmp_path))
    assert (evaluated.val_dice, evaluated.val_scores) == (0.8, {"p3": 0.8})
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
        and "bootstrap interval of the mean difference lies above zero" in record["metric_description"]
    )
    assert [record[key] for key in ("improvement", "improvement_ci_low", "improvement_ci_high", "paired_images")] == [
        None
    ] * 4
    # The card evaluate wrote, then the decision register made.
    assert version.description.startswith("# card\n\n## Registry decision\nThe sections above are what the evaluate")
    assert "register stage decided when it registered this model as version 1" in version.description
    assert version.description.endswith("Alias **champion**: there was no champion yet.\n")
    assert not {"improvement", "paired_images"} & set(version.tags)
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


def test_register_refuses_per_image_scores_of_another_evaluation(tmp_path):
    files = evaluated_files(tmp_path)
    write_val_scores(files["val_per_image"], {"p3": 0.7})
    with pytest.raises(
        ModelError,
        match=r"val_per_image\.csv: its mean Dice 0\.700000 is not .*evaluate\.json's val_dice_deployed 0\.800000; "
        "run the evaluate stage again",
    ):
        EvaluatedModel.read(**files)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("id,score\np3,0.8\n", ": expected the columns id, dice, found ('id', 'score')"),
        ("id,dice\np3,high\n", ", line 2: dice 'high' is not a number between 0 and 1"),
        ("id,dice\np3,nan\n", ", line 2: dice 'nan' is not a number between 0 and 1"),
        ("id,dice\np3,0.8\np3,0.8\n", ", line 3: image 'p3' is listed twice"),
        ("id,dice\n", ": no images"),
        ("", ": expected the columns id, dice, found ()"),
    ],
)
def test_register_names_a_malformed_per_image_file(tmp_path, content, problem):
    files = evaluated_files(tmp_path)
    files["val_per_image"].write_text(content)
    with pytest.raises(ModelError) as refused:
        EvaluatedModel.read(**files)
    assert str(refused.value) == f"{files['val_per_image']}{problem}; run the evaluate stage again"
