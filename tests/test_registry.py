import math
from dataclasses import replace

import mlflow
import pytest

from pipeline.core.classes import PERSON
from pipeline.core.splits import SplitInfo
from pipeline.evaluate.registry import (
    CHALLENGER,
    CHAMPION,
    Contender,
    apply_decision,
    current_champion,
    decide_alias,
    identify_test_set,
    version_tags,
)
from tests.helpers.modelstore import NAME, register, tiny_checkpoint

SPLIT_INFO = SplitInfo(
    "abc", 64, PERSON, {"train": 1, "val": 1, "test": 2}, {"test": ["p1", "p2"], "val": ["p3"], "train": ["p4"]}
)


def test_first_model_becomes_champion():
    decision = decide_alias(Contender("1", 0.8, "set-a"), None)
    assert (decision.alias, decision.champion_version) == (CHAMPION, None)
    assert decision.reason == "there was no champion yet"


@pytest.mark.parametrize(("dice", "alias"), [(0.81, CHAMPION), (0.80, CHALLENGER), (0.79, CHALLENGER)])
def test_champion_moves_only_on_a_strictly_higher_test_dice(dice, alias):
    decision = decide_alias(Contender("3", dice, "set-a"), Contender("2", 0.80, "set-a"))
    assert decision.alias == alias
    assert (decision.champion_version, decision.champion_test_dice) == ("2", 0.80)
    assert "champion version 2 (0.8000)" in decision.reason


def test_scores_on_other_test_data_are_not_compared():
    decision = decide_alias(Contender("3", 0.99, "set-b"), Contender("2", 0.5, "set-a"))
    assert decision.alias == CHALLENGER and "other test data" in decision.reason
    untagged = decide_alias(Contender("3", 0.99, "set-b"), Contender("2", math.nan, ""))
    assert untagged.alias == CHALLENGER and "test set unknown" in untagged.reason


def test_test_set_id_follows_data_size_and_membership():
    base = identify_test_set(SPLIT_INFO)
    assert (
        identify_test_set(replace(SPLIT_INFO, ids={**SPLIT_INFO.ids, "train": ["other"]})) == base
    )  # train is irrelevant
    assert identify_test_set(replace(SPLIT_INFO, ids={**SPLIT_INFO.ids, "test": ["p1"]})) != base
    assert identify_test_set(replace(SPLIT_INFO, image_size=320)) != base
    assert identify_test_set(replace(SPLIT_INFO, data_hash="def")) != base


def test_version_tags_keep_full_precision_and_provenance():
    tags = version_tags(
        {"data_hash": "abc", "git_commit": "1234"},
        SPLIT_INFO,
        {"test_dice": 0.123456789012, "test_loss": 0.5, "threshold": 0.45, "val_dice_at_threshold": 0.9},
    )
    assert tags == {
        "data_hash": "abc",
        "git_commit": "1234",
        "test_set": identify_test_set(SPLIT_INFO),
        "test_dice": "0.123456789012",
        "test_loss": "0.5",
        "threshold": "0.45",
    }


def test_registered_versions_get_tags_card_and_aliases(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    client = mlflow.MlflowClient
    decisions = []
    for dice in (0.7, 0.6, 0.75):
        run_id, version = register(tmp_path, checkpoint, threshold=0.5, tags={"test_dice": repr(dice), "test_set": "s"})
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
    assert client().get_run(version.run_id).data.tags["alias_decision"] == CHALLENGER
