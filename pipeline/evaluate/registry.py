"""Model registry: each evaluated model becomes a version; the champion alias moves on merit only.

A version is the deployable model: the checkpoint plus the threshold and TTA it was evaluated
with, as the pyfunc in ``pipeline/serve/pyfunc.py``. Its tags carry the data hash, git commit, test metrics
and an identifier of the test set, so later decisions compare like with like.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow

from ..core.splits import SplitInfo
from ..serve import pyfunc
from ..serve.predictor import CHECKPOINT_ARTIFACT
from ..serve.settings import InferenceSettings

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "model"
# What the served model imports; stated rather than inferred, which would load the model in a
# subprocess and cost seconds per evaluation.
REQUIREMENTS = (
    "torch",
    "segmentation-models-pytorch",
    "timm",
    "numpy",
    "pandas",
    "opencv-python-headless",
    "albumentations",
    "pydantic",
    "ruamel.yaml",
    "tqdm",
)


def identify_test_set(split_info: SplitInfo) -> str:
    """Identifies the test images exactly: the data, the size they are scored at, and which ones."""
    identity = {
        "data_hash": split_info.data_hash,
        "image_size": split_info.image_size,
        "test": sorted(split_info.ids["test"]),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Contender:
    version: str
    test_dice: float
    test_set: str


@dataclass(frozen=True)
class AliasDecision:
    version: str
    alias: str
    reason: str
    test_dice: float
    champion_version: str | None
    champion_test_dice: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_alias(candidate: Contender, champion: Contender | None) -> AliasDecision:
    """``champion`` only for a strictly higher test Dice on the same test set (or no champion yet)."""

    def decided(alias: str, reason: str) -> AliasDecision:
        return AliasDecision(
            candidate.version,
            alias,
            reason,
            candidate.test_dice,
            champion.version if champion else None,
            champion.test_dice if champion else None,
        )

    if champion is None:
        return decided(CHAMPION, "there was no champion yet")
    if champion.test_set != candidate.test_set:
        return decided(
            CHALLENGER,
            f"champion version {champion.version} was tested on other test data "
            f"(test set {champion.test_set or 'unknown'}, now {candidate.test_set}), so the "
            "scores are not comparable; move the alias by hand if this one should serve",
        )
    if candidate.test_dice > champion.test_dice:
        return decided(
            CHAMPION,
            f"test Dice {candidate.test_dice:.4f} beats champion version {champion.version} ({champion.test_dice:.4f})",
        )
    return decided(
        CHALLENGER,
        f"test Dice {candidate.test_dice:.4f} does not beat champion version "
        f"{champion.version} ({champion.test_dice:.4f})",
    )


def version_tags(training_tags: dict[str, str], split_info: SplitInfo, metrics: dict[str, float]) -> dict[str, str]:
    """Provenance from the training run, the test set's identity, and the test metrics at full
    precision (a rounded champion score could lose a tie to its own re-evaluation)."""
    provenance = {key: training_tags.get(key, "unknown") for key in ("data_hash", "git_commit")}
    scores = {key: repr(value) for key, value in metrics.items() if key.startswith("test_") or key == "threshold"}
    return {**provenance, "test_set": identify_test_set(split_info), **scores}


def register_model(
    *, run_id: str, name: str, checkpoint: Path, card: Path, settings: InferenceSettings, tags: dict[str, str]
) -> str:
    """Log the pyfunc into the training run, register it as a new version of ``name``; returns the version."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=pyfunc.__file__,
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint), "model_card": str(card)},
            model_config={
                "threshold": settings.threshold,
                "tta": settings.tta,
                "checkpoint_sha256": settings.checkpoint_sha256,
            },
            # The package travels with the model: serving does not depend on how it is installed.
            code_paths=[str(Path(pyfunc.__file__).parents[1])],
            pip_requirements=[f"{package}=={installed_version(package)}" for package in REQUIREMENTS],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=card.read_text(encoding="utf-8"))
    return version


def current_champion(name: str) -> Contender | None:
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    # A champion set by hand on an untagged version is comparable to nothing.
    return Contender(str(found.version), float(found.tags.get("test_dice", "nan")), found.tags.get("test_set", ""))


def apply_decision(name: str, run_id: str, decision: AliasDecision) -> None:
    """Point the alias at the version and record the decision on the version and the run."""
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, decision.alias, decision.version)
    for key, value in (("alias_decision", decision.alias), ("alias_reason", decision.reason)):
        client.set_model_version_tag(name, decision.version, key, value)
        client.set_tag(run_id, key, value)
