"""Model registry: each evaluated model becomes a version; the champion alias moves on validation merit only.

A version is the deployable model: the pyfunc in ``pipeline/serve/pyfunc.py``, which serves the
verified ONNX export with onnxruntime, plus the checkpoint (for ``predict --backend torch``)
and the model card. The ONNX file is the one record of how the model runs (threshold, TTA,
classes). The version's tags carry the data hash, git commit, the validation Dice of the
deployed model, the test metrics (a report no decision reads; repeated for search in the UI,
never read back) and identifiers of the validation and test sets, so later decisions compare
like with like.

The alias is decided by a paired comparison on the same validation images: each image's Dice
under the new version minus its Dice under the champion (the champion's from the
``val_per_image.csv`` its evaluation run logged), and the bootstrap interval of the mean of
those differences. A higher mean alone is what a rerun with another ``train.seed`` often
gives; only an interval wholly above zero is an improvement, so ``champion`` does not move on
luck. Scores of other validation images are never paired: such a version stays challenger
until someone promotes it by hand.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

from ..core import paths
from ..core.errors import ModelError, TrackingError
from ..core.files import read_json, sha256_file
from ..core.intervals import CONFIDENCE, Interval, bootstrap_mean
from ..core.splits import SplitInfo
from ..serve import pyfunc
from ..serve.onnx_backend import ONNX_ARTIFACT
from ..serve.registered import CHECKPOINT_ARTIFACT, COMPLETE_TAG
from ..serve.settings import read_description
from ..tracking import EVALUATION_ARTIFACTS

CHAMPION, CHALLENGER = "champion", "challenger"
# The scores a decision reads: per-image validation Dice of the deployable model (its threshold
# and TTA applied), paired image by image with the champion's. Test metrics are reported, never
# compared: choosing on them after a sweep would bias the very number reported for the winner.
# The name of their mean: a tag on each version, and its entry in metrics/evaluate.json.
SELECTION_METRIC = paths.VAL_DICE_DEPLOYED
SELECTION_DESCRIPTION = (
    "validation Dice per image (at the version's threshold and TTA), paired with the champion's on the same "
    f"validation images: champion only when the {CONFIDENCE:.0%} bootstrap interval of the mean difference "
    "lies above zero"
)
# How far val_dice_deployed may lie from the mean of the per-image scores evaluate wrote beside it.
MEAN_TOLERANCE = 1e-5
# Where an evaluation run keeps metrics/val_per_image.csv (tracking.log_evaluation logs it there).
VAL_PER_IMAGE_ARTIFACT = f"{EVALUATION_ARTIFACTS}/{paths.VAL_PER_IMAGE.name}"
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
    """Identifies a split's images exactly: the data, the size they are scored at and how they
    were resized to it, and which ones."""
    identity = {
        "data_hash": split_info.data_hash,
        "image_size": split_info.image_size,
        "resize": split_info.resize,
        split: sorted(split_info.ids[split]),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def read_val_scores(path: Path) -> dict[str, float]:
    """A ``val_per_image.csv`` as Dice by image id; a file that is not one is a one-line
    ModelError naming it."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = tuple(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelError(f"{path}: unreadable ({type(exc).__name__})") from None
    if header != paths.VAL_PER_IMAGE_FIELDS:
        raise ModelError(f"{path}: expected the columns {', '.join(paths.VAL_PER_IMAGE_FIELDS)}, found {header}")
    scores: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        try:
            dice = float(row["dice"])
        except (TypeError, ValueError):
            dice = math.nan
        if not 0 <= dice <= 1:
            raise ModelError(f"{path}, line {line}: dice {row['dice']!r} is not a number between 0 and 1")
        if row["id"] in scores:
            raise ModelError(f"{path}, line {line}: image {row['id']!r} is listed twice")
        scores[row["id"]] = dice
    if not scores:
        raise ModelError(f"{path}: no images")
    return scores


@dataclass(frozen=True)
class Contender:
    version: str
    val_dice: float
    val_set: str
    # Dice by validation image id (metrics/val_per_image.csv); None for a champion whose
    # evaluation run holds no readable copy.
    val_scores: dict[str, float] | None


@dataclass(frozen=True)
class AliasDecision:
    version: str
    alias: str
    reason: str
    metric: str
    val_dice_deployed: float
    champion_version: str | None
    champion_val_dice_deployed: float | None
    # The paired comparison with the champion (this version minus the champion, per validation
    # image): the mean difference, its bootstrap interval, how many images; None when nothing
    # was compared.
    improvement: float | None
    improvement_ci_low: float | None
    improvement_ci_high: float | None
    paired_images: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, name: str) -> dict[str, Any]:
        """``models/registry.json``: which version of which model got which alias, and why."""
        return {"registered_model": name, **self.to_dict(), "metric_description": SELECTION_DESCRIPTION}

    def comparison_tags(self) -> dict[str, str]:
        """The paired comparison's numbers as tags (full precision); none when nothing was compared."""
        if self.paired_images is None:
            return {}
        numbers = ("improvement", "improvement_ci_low", "improvement_ci_high")
        return {key: repr(getattr(self, key)) for key in numbers} | {"paired_images": str(self.paired_images)}

    def card_section(self) -> str:
        """The model card's last section, which the register stage adds to the version's description."""
        numbers = ""
        if self.paired_images is not None:
            numbers = (
                f"\nThe numbers: per validation image, this version's Dice minus champion version "
                f"{self.champion_version}'s; their mean and {CONFIDENCE:.0%} bootstrap interval.\n"
                "`champion` moves only when the whole interval lies above zero.\n"
            )
        return f"""
## Registry decision
The sections above are what the evaluate stage measured, before any decision; this one is
what the register stage decided when it registered this model as version {self.version}.

Alias **{self.alias}**: {self.reason}.
{numbers}"""


def decide_alias(candidate: Contender, champion: Contender | None) -> AliasDecision:
    """``champion`` when there is no champion yet, or when the candidate's per-image validation
    Dice, paired with the champion's on the same validation images, is higher by a mean whose
    bootstrap interval lies above zero; ``challenger`` otherwise, and whenever the two cannot be
    paired (other validation data, other images, no per-image scores of the champion)."""

    def decided(alias: str, reason: str, interval: Interval | None = None) -> AliasDecision:
        return AliasDecision(
            candidate.version,
            alias,
            reason,
            SELECTION_METRIC,
            candidate.val_dice,
            champion.version if champion else None,
            champion.val_dice if champion else None,
            interval.mean if interval else None,
            interval.low if interval else None,
            interval.high if interval else None,
            interval.n if interval else None,
        )

    if champion is None:
        return decided(CHAMPION, "there was no champion yet")
    by_hand = f"promote this one by hand (`unet-pipeline promote {candidate.version} --reason ...`) if it should serve"
    if champion.val_set != candidate.val_set:
        return decided(
            CHALLENGER,
            f"champion version {champion.version} was validated on other data "
            f"(validation set {champion.val_set or 'unknown'}, now {candidate.val_set}), so the "
            f"scores are not comparable; {by_hand}",
        )
    if champion.val_scores is None:
        return decided(
            CHALLENGER,
            f"champion version {champion.version} has no readable per-image validation scores "
            f"({VAL_PER_IMAGE_ARTIFACT} of its evaluation run) to pair with, so nothing was compared; {by_hand}",
        )
    ids = sorted(candidate.val_scores or {})
    if set(ids) != set(champion.val_scores):
        shared = len(set(ids) & set(champion.val_scores))
        return decided(
            CHALLENGER,
            f"champion version {champion.version} was scored on other validation images ({len(champion.val_scores)} "
            f"images, now {len(ids)}, {shared} in both), so nothing was compared; {by_hand}",
        )
    # In id order: the same two sets of scores always resample alike.
    interval = bootstrap_mean([candidate.val_scores[id_] - champion.val_scores[id_] for id_ in ids])
    comparison = f"v{champion.version}: {interval.describe_signed()} on {interval.n} validation images"
    if interval.excludes_zero_from_above():
        return decided(CHAMPION, f"better than {comparison}", interval)
    return decided(CHALLENGER, f"not better than {comparison}", interval)


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
    val_dice: float  # val_dice_deployed, from ``metrics``
    val_scores: dict[str, float]  # metrics/val_per_image.csv: the Dice by image whose mean is ``val_dice``

    @classmethod
    def read(
        cls,
        checkpoint: Path = paths.BEST_CHECKPOINT,
        onnx_model: Path = paths.ONNX_MODEL,
        card: Path = paths.MODEL_CARD,
        metrics_file: Path = paths.EVALUATE_METRICS,
        val_per_image: Path = paths.VAL_PER_IMAGE,
    ) -> EvaluatedModel:
        """Refuses files that do not belong together (an ONNX export of another checkpoint, a
        missing score, per-image scores of another evaluation), naming the file and the stage to rerun."""
        score = paths.VAL_DICE_DEPLOYED
        for path in (checkpoint, onnx_model, card, metrics_file, val_per_image):
            if not path.is_file():
                raise ModelError(f"{path}: missing; run the evaluate stage (`dvc repro evaluate`)")
        settings = read_description(onnx_model).settings
        if settings.checkpoint_sha256 != sha256_file(checkpoint):
            raise ModelError(f"{onnx_model} was not exported from {checkpoint}; run the evaluate stage again")
        metrics = read_json(metrics_file)
        value = metrics.get(score) if isinstance(metrics, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ModelError(f"{metrics_file}: no number {score!r}; run the evaluate stage again")
        try:
            val_scores = read_val_scores(val_per_image)
        except ModelError as exc:
            raise ModelError(f"{exc}; run the evaluate stage again") from None
        mean = float(np.mean(list(val_scores.values())))
        # Written from the same float32 scores, the two means agree to float32 rounding.
        if not math.isclose(mean, value, abs_tol=MEAN_TOLERANCE):
            raise ModelError(
                f"{val_per_image}: its mean Dice {mean:.6f} is not {metrics_file}'s {score} {value:.6f}; "
                "run the evaluate stage again"
            )
        return cls(checkpoint, onnx_model, card, metrics, float(value), val_scores)


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
    candidate = Contender(version, evaluated.val_dice, tags["val_set"], evaluated.val_scores)
    decision = decide_alias(candidate, current_champion(name))
    apply_decision(name, run_id, decision)
    client = mlflow.MlflowClient()
    # The card file is evaluate's, written before any decision; the version's copy adds it.
    card = evaluated.card.read_text(encoding="utf-8") + decision.card_section()
    client.update_model_version(name, version, description=card)
    client.set_model_version_tag(name, version, COMPLETE_TAG, "true")
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


def champion_version(name: str) -> ModelVersion | None:
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def current_champion(name: str) -> Contender | None:
    """The champion with its validation scores: the per-image ones from its evaluation run."""
    found = champion_version(name)
    if found is None:
        return None
    # A champion without a validation score or set (an alias set by hand in the UI on a version
    # this pipeline did not register) is comparable to nothing.
    return Contender(
        str(found.version),
        float(found.tags.get(SELECTION_METRIC, "nan")),
        found.tags.get("val_set", ""),
        logged_val_scores(found.run_id),
    )


def logged_val_scores(run_id: str) -> dict[str, float] | None:
    """The per-image validation Dice an evaluation run logged; None when it holds no readable copy
    (the run of a version the register stage did not register, say)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=VAL_PER_IMAGE_ARTIFACT, dst_path=folder
            )
            return read_val_scores(Path(path))
        except (mlflow.exceptions.MlflowException, OSError, ModelError):
            return None


def apply_decision(name: str, run_id: str, decision: AliasDecision) -> None:
    """Point the alias at the version and record the decision on the version and the run."""
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, decision.alias, decision.version)
    for key, value in (
        ("alias_decision", decision.alias),
        ("alias_reason", decision.reason),
        ("alias_metric", decision.metric),
        *decision.comparison_tags().items(),
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
    previous = champion_version(name)
    previous_version = str(previous.version) if previous else None
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
