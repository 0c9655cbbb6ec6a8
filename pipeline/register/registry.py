"""Model registry: each evaluated model becomes a version; the champion alias moves on validation merit only.

A version is the deployable model: the pyfunc in ``pipeline/serve/pyfunc.py``, which serves the
verified ONNX export with onnxruntime, plus the checkpoint (for ``predict --backend torch``)
and the model card. The ONNX file is the one record of how the model runs (threshold, TTA,
classes). The version's tags carry the data hash, git commit, the validation Dice that decides
its alias, the test metrics (a report no decision reads; repeated for search in the UI, never
read back) and identifiers of the validation and test sets, so later decisions compare like
with like.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

from ..core import paths
from ..core.errors import ModelError, TrackingError
from ..core.files import read_json, sha256_file
from ..core.splits import SplitInfo
from ..serve import pyfunc
from ..serve.onnx_backend import ONNX_ARTIFACT
from ..serve.registered import CHECKPOINT_ARTIFACT, COMPLETE_TAG
from ..serve.settings import read_description

CHAMPION, CHALLENGER = "champion", "challenger"
# The one score a decision reads: mean per-image validation Dice of the deployable model (its
# threshold and TTA applied). Test metrics are reported, never compared: choosing on them
# after a sweep would bias the very number reported for the winner.
# Also its tag on each version, and its name in metrics/evaluate.json.
SELECTION_METRIC = paths.VAL_DICE_DEPLOYED
SELECTION_DESCRIPTION = "validation Dice (mean per image, at the version's threshold and TTA)"
MODEL_ARTIFACT = "model"
CARD_ARTIFACT = "model_card"
# Inputs unconstrained: the model accepts several payload forms (base64 files, pixel arrays,
# a DataFrame column) and validates them itself, with messages that name the image; an input
# schema would make MLflow convert or refuse them first. Outputs: a mask per image.
SIGNATURE = ModelSignature(inputs=None, outputs=Schema([ColSpec(AnyType())]))
# The request body users see in the UI (and MLflow checks by loading the model once): one
# base64-encoded PNG, the README's first form.
EXAMPLE_IMAGE_SIDE = 32
# What the served model imports (MLflow adds itself); stated rather than inferred, which would
# load the model in a subprocess and cost seconds per evaluation. No PyTorch: it runs the ONNX file.
REQUIREMENTS = ("onnxruntime", "numpy", "pandas", "opencv-python-headless", "pillow")


def identify_split(split_info: SplitInfo, split: str) -> str:
    """Identifies a split's images exactly: the data, the size they are scored at, and which ones."""
    identity = {
        "data_hash": split_info.data_hash,
        "image_size": split_info.image_size,
        split: sorted(split_info.ids[split]),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Contender:
    version: str
    val_dice: float
    val_set: str


@dataclass(frozen=True)
class AliasDecision:
    version: str
    alias: str
    reason: str
    metric: str
    val_dice_deployed: float
    champion_version: str | None
    champion_val_dice_deployed: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, name: str) -> dict[str, Any]:
        """``models/registry.json``: which version of which model got which alias, and why."""
        return {"registered_model": name, **self.to_dict(), "metric_description": SELECTION_DESCRIPTION}


def decide_alias(candidate: Contender, champion: Contender | None) -> AliasDecision:
    """``champion`` only for a strictly higher validation Dice on the same validation set (or no champion yet)."""

    def decided(alias: str, reason: str) -> AliasDecision:
        return AliasDecision(
            candidate.version,
            alias,
            reason,
            SELECTION_METRIC,
            candidate.val_dice,
            champion.version if champion else None,
            champion.val_dice if champion else None,
        )

    if champion is None:
        return decided(CHAMPION, "there was no champion yet")
    if champion.val_set != candidate.val_set:
        return decided(
            CHALLENGER,
            f"champion version {champion.version} was validated on other data "
            f"(validation set {champion.val_set or 'unknown'}, now {candidate.val_set}), so the "
            f"scores are not comparable; promote this one by hand (`unet-pipeline promote {candidate.version} "
            "--reason ...`) if it should serve",
        )
    if candidate.val_dice > champion.val_dice:
        return decided(
            CHAMPION,
            f"validation Dice {candidate.val_dice:.4f} beats champion version {champion.version} "
            f"({champion.val_dice:.4f})",
        )
    return decided(
        CHALLENGER,
        f"validation Dice {candidate.val_dice:.4f} does not beat champion version "
        f"{champion.version} ({champion.val_dice:.4f})",
    )


def version_tags(
    training_tags: dict[str, str], split_info: SplitInfo, metrics: dict[str, float], val_dice: float
) -> dict[str, str]:
    """Provenance from the training run, the identities of the validation and test sets, the
    selection score and the headline test metrics with their intervals (metrics/evaluate.json;
    the details stay in the evaluation run), at full precision (a rounded champion score could
    lose a tie to its own re-evaluation)."""
    provenance = {key: training_tags.get(key, "unknown") for key in ("data_hash", "git_commit")}
    scores = {key: repr(value) for key, value in metrics.items() if key.startswith("test_") or key == "threshold"}
    return {
        **provenance,
        "val_set": identify_split(split_info, "val"),
        "test_set": identify_split(split_info, "test"),
        SELECTION_METRIC: repr(val_dice),
        **scores,
    }


@dataclass(frozen=True)
class EvaluatedModel:
    """What the evaluate stage wrote for the register stage: the model as files, and its scores."""

    checkpoint: Path
    onnx_model: Path
    card: Path
    metrics: dict[str, Any]  # metrics/evaluate.json
    val_dice: float  # the selection score, from ``metrics``

    @classmethod
    def read(
        cls,
        checkpoint: Path = paths.BEST_CHECKPOINT,
        onnx_model: Path = paths.ONNX_MODEL,
        card: Path = paths.MODEL_CARD,
        metrics_file: Path = paths.EVALUATE_METRICS,
    ) -> EvaluatedModel:
        """Refuses files that do not belong together (an ONNX export of another checkpoint, a
        missing score), naming the file and the stage to rerun."""
        score = paths.VAL_DICE_DEPLOYED
        for path in (checkpoint, onnx_model, card, metrics_file):
            if not path.is_file():
                raise ModelError(f"{path}: missing; run the evaluate stage (`dvc repro evaluate`)")
        settings = read_description(onnx_model).settings
        if settings.checkpoint_sha256 != sha256_file(checkpoint):
            raise ModelError(f"{onnx_model} was not exported from {checkpoint}; run the evaluate stage again")
        metrics = read_json(metrics_file)
        value = metrics.get(score) if isinstance(metrics, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ModelError(f"{metrics_file}: no number {score!r}; run the evaluate stage again")
        return cls(checkpoint, onnx_model, card, metrics, float(value))


def register_evaluated(
    name: str, run_id: str, evaluated: EvaluatedModel, training_tags: dict[str, str], split_info: SplitInfo
) -> tuple[AliasDecision, list[str]]:
    """Register the evaluated model as a new version of ``name`` from the evaluation run
    ``run_id``, decide its alias, and mark it complete, last: a registration cut short (kill -9)
    leaves a version without that mark, which predict refuses and the next registration from the
    same evaluation retires. Returns the decision and the versions retired."""
    retired = retire_incomplete(name, run_id)
    tags = version_tags(training_tags, split_info, evaluated.metrics, evaluated.val_dice)
    version = register_model(run_id=run_id, name=name, evaluated=evaluated, tags=tags)
    decision = decide_alias(Contender(version, evaluated.val_dice, tags["val_set"]), current_champion(name))
    apply_decision(name, run_id, decision)
    mlflow.MlflowClient().set_model_version_tag(name, version, COMPLETE_TAG, "true")
    return decision, retired


def retire_incomplete(name: str, run_id: str) -> list[str]:
    """Delete the versions of ``name`` an earlier, interrupted registration from this evaluation
    run left incomplete; another evaluation's registration (a queued experiment's, maybe still
    running) is never touched."""
    client = mlflow.MlflowClient()
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return []
    orphans = [str(version.version) for version in found if COMPLETE_TAG not in version.tags]
    for version in orphans:
        client.delete_model_version(name, version)
    return orphans


def register_model(*, run_id: str, name: str, evaluated: EvaluatedModel, tags: dict[str, str]) -> str:
    """Log the pyfunc into the training run, register it as a new version of ``name``; returns the version."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=pyfunc.__file__,
            artifacts={
                CHECKPOINT_ARTIFACT: str(evaluated.checkpoint),
                ONNX_ARTIFACT: str(evaluated.onnx_model),
                CARD_ARTIFACT: str(evaluated.card),
            },
            # The package travels with the model: serving does not depend on how it is installed.
            code_paths=[str(Path(pyfunc.__file__).parents[1])],
            pip_requirements=[f"{package}=={installed_version(package)}" for package in REQUIREMENTS],
            signature=SIGNATURE,
            input_example=[pyfunc.encode_png(np.zeros((EXAMPLE_IMAGE_SIDE, EXAMPLE_IMAGE_SIDE, 3), np.uint8))],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=evaluated.card.read_text(encoding="utf-8"))
    return version


def current_champion(name: str) -> Contender | None:
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    # A champion without a validation score (an alias set by hand in the UI on a version this
    # pipeline did not register) is comparable to nothing.
    return Contender(str(found.version), float(found.tags.get(SELECTION_METRIC, "nan")), found.tags.get("val_set", ""))


def apply_decision(name: str, run_id: str, decision: AliasDecision) -> None:
    """Point the alias at the version and record the decision on the version and the run."""
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, decision.alias, decision.version)
    for key, value in (
        ("alias_decision", decision.alias),
        ("alias_reason", decision.reason),
        ("alias_metric", decision.metric),
    ):
        client.set_model_version_tag(name, decision.version, key, value)
        client.set_tag(run_id, key, value)


def parse_version(reference: str, name: str) -> str:
    """``3``, ``NAME/3`` or ``models:/NAME/3`` -> ``3``; a version of another registered model is refused."""
    match = re.fullmatch(r"(?:(?:models:/)?(?P<name>[^/@]+)/)?(?P<version>[0-9]+)", reference.strip())
    if match is None:
        raise TrackingError(f"VERSION {reference!r}: give a version number, e.g. 3 or models:/{name}/3")
    if match["name"] not in (None, name):
        raise TrackingError(
            f"VERSION {reference!r} is a version of {match['name']!r}, not of {name!r} (mlflow.registered_model); "
            "promote only moves this project's champion"
        )
    return match["version"]


def promote(name: str, reference: str, reason: str) -> str | None:
    """Move ``champion`` to a version by hand; returns the previous champion's version (or None).

    The reason and the previous champion are recorded as tags of the promoted version.
    """
    if not reason.strip():
        raise TrackingError("--reason must say why this version should serve")
    version = parse_version(reference, name)
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"registered model {name!r} has no version {version}") from None
    if SELECTION_METRIC not in found.tags:
        raise TrackingError(
            f"{name} version {version} has no evaluation (no {SELECTION_METRIC} tag): only versions the "
            "register stage registered can be promoted"
        )
    previous = current_champion(name)
    previous_version = previous.version if previous else None
    if previous_version == version:
        raise TrackingError(f"{name} version {version} is already the champion")
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = client.get_registered_model(name).aliases.get(CHALLENGER)
    if challenger is not None and str(challenger) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    for key, value in (
        ("alias_decision", CHAMPION),
        ("alias_reason", f"promoted by hand: {reason.strip()}"),
        ("alias_metric", "manual"),
        ("promoted_reason", reason.strip()),
        ("promoted_from", previous_version or "none"),
    ):
        client.set_model_version_tag(name, version, key, value)
    return previous_version
