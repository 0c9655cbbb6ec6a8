"""The model card: what the model is, what it was trained and tested on, how well it does."""

from __future__ import annotations

from typing import Any

from ..core import paths
from ..core.classes import ClassSpec
from ..core.intervals import CONFIDENCE
from ..core.resizing import describe
from ..core.splits import SplitInfo
from ..model.metrics import METRIC_FUNCTIONS
from .predictions import HEADLINE_METRICS, headline_interval

TRACKING_PARAMS = "mlflow."

# Content hash (split.json's data_hash) of the reference Human-Segmentation dataset, from
# whichever source it was fetched: only a model trained on it gets the people-photo wording.
REFERENCE_DATA_HASH = "12617323389a0b528707da125a7710d16d3a8d878397141b5af9cf12d4801eb6"
REFERENCE_DATASET = "The Human-Segmentation dataset of photos of people"
REFERENCE_INTENDED_USE = """Foreground masks of people in photos similar to the training data (one or a few people,
upright, roughly centred, daylight photos): background removal or blurring, cropping,
photo editing. Not for identifying people, not for safety-critical decisions, and not
validated on video, crowds or medical or surveillance imagery."""
REFERENCE_LIMITS = """Trained on a few hundred images of a single source: expect lower quality on other kinds of
  photos (unusual poses, several overlapping people, people small in the frame, strong
  backlight)."""


# How the card names the HEADLINE_METRICS.
HEADLINE_NAMES = {"dice": "Dice", "iou": "IoU", "precision": "precision", "recall": "recall"}


def _binary_sections(classes: ClassSpec, metrics: dict[str, float], threshold_source: str) -> dict[str, str]:
    name = classes.names[1]
    return {
        "summary": f"Binary segmentation ({name} against {classes.names[0]})",
        "output": f"whether it belongs to {name}",
        "intended_use": f"""Masks of {name} in images similar to the training data. Not validated on other sources,
and not for safety-critical decisions.""",
        "decision_title": "Decision threshold",
        "decision": (
            f"{name.capitalize()} when the predicted probability is at least **{metrics['threshold']:g}** "
            f"({threshold_source})."
        ),
        "metrics_at": "At the threshold above",
        "per_class": "",
        "subject": name,
        "limits": "Trained on a single source: expect lower quality on other kinds of images.",
    }


def _multiclass_sections(classes: ClassSpec, metrics: dict[str, float]) -> dict[str, str]:
    rows = "\n".join(
        f"| {name} | {metrics[f'test_dice_{name}']:.4f} | {metrics[f'test_iou_{name}']:.4f} |" for name in classes.names
    )
    return {
        "summary": f"Segmentation into {classes.count} classes ({', '.join(classes.names)})",
        "output": "its class",
        "intended_use": """Class maps of images similar to the training data. Not validated on other sources, and
not for safety-critical decisions.""",
        "decision_title": "Decision rule",
        "decision": "Each pixel takes the class with the highest score (argmax); there is no threshold to tune.",
        "metrics_at": "With that rule",
        "per_class": f"""

Per class (mean per image); the headline rows above average the foreground classes.

| class | Dice | IoU |
|---|---|---|
{rows}""",
        "subject": "foreground",
        "limits": "Trained on a single source: expect lower quality on other kinds of images.",
    }


def render_card(
    *,
    run_id: str,
    params: dict[str, Any],
    split_info: SplitInfo,
    metrics: dict[str, float],
    val_dice: float,
    threshold_source: str,
    worst: list[dict[str, Any]],
    classes: ClassSpec,
    data_source: str,
    encoder_weights_sha256: str | None = None,
) -> str:
    """Markdown for ``models/model_card.md``, the run and the registered version's description.

    ``classes`` are the ones split recorded with the data; ``data_source`` is where the training
    run's data came from (``data.source``); ``val_dice`` is ``val_dice_deployed``, the mean of
    the per-image validation scores the champion decision pairs. The registered model's name is
    not in it: registering under another name changes nothing the card says."""
    counts = split_info.counts
    text = (
        _binary_sections(classes, metrics, threshold_source)
        if classes.binary
        else _multiclass_sections(classes, metrics)
    )
    dataset = f"Data from `{data_source}`"
    if split_info.data_hash == REFERENCE_DATA_HASH:
        text.update(intended_use=REFERENCE_INTENDED_USE, limits=REFERENCE_LIMITS)
        dataset = f"{REFERENCE_DATASET}, from `{data_source}`"
    rows = "\n".join(
        f"| {name} | {metrics[f'test_{name}']:.4f} | {metrics[f'test_{name}_pooled']:.4f} |"
        for name in METRIC_FUNCTIONS
    )
    headline = "\n".join(
        f"- {HEADLINE_NAMES[name]} {headline_interval(metrics, name, counts['test']).describe()}"
        for name in HEADLINE_METRICS
    )
    worst_lines = "\n".join(
        f"- `{row['id']}`: Dice {row['dice']:.3f}, "
        f"{text['subject']} covers {row['foreground_fraction']:.0%} of the image"
        for row in worst
    )
    input_size_dice = metrics[f"test_dice{paths.AT_INPUT_SIZE}"]
    weights = f"{params['model.encoder_weights'] or 'random'} initial weights"
    if encoder_weights_sha256:
        weights = f"initial weights from `{params['model.encoder_weights']}`, SHA-256 `{encoder_weights_sha256}`"
    # The parameters that shaped the model: where it is tracked and registered is not among them.
    param_lines = "\n".join(
        f"| `{key}` | `{value}` |" for key, value in params.items() if not key.startswith(TRACKING_PARAMS)
    )
    selection = (
        f"`val_dice_deployed` {val_dice:.4f}, the mean per-image Dice at this model's threshold and TTA on the "
        f"{counts['val']} validation images. The register stage pairs this model's Dice on each of them with "
        "the champion's on the same image: this version becomes `champion` only when the bootstrap interval of "
        "the mean difference lies above zero, `challenger` otherwise. The registered version's copy of this "
        "card ends with that decision (Registry decision)."
    )
    return f"""# Model card: {params["model.arch"]} ({params["model.encoder"]})

{text["summary"]}: a {params["model.arch"]} ({params["model.encoder"]} encoder,
{weights}) that outputs, per pixel, {text["output"]}. MLflow run `{run_id}`.

## Intended use
{text["intended_use"]}

## Data
{dataset}; content hash (SHA-256 of every image and mask)
`{split_info.data_hash}`. Seeded split: {counts["train"]} train, {counts["val"]} validation,
{counts["test"]} test images, resized to {describe(split_info.image_size, split_info.resize)}.
The test images were not seen by training, model selection or threshold choice.

## {text["decision_title"]}
{text["decision"]}
Flip test-time augmentation: {"on" if params["evaluate.tta"] else "off"}. `predict` and the
served model apply both.

## Champion selection
{selection} The test metrics below are a report: no decision reads them.

## Test metrics
{text["metrics_at"]}, on the {counts["test"]} test images at each photo's own size, as `predict` returns
their masks (definitions: docs/metrics.md).

Mean per image, in brackets its {CONFIDENCE:.0%} bootstrap interval over the {counts["test"]} test
images: how much the score depends on which images were drawn for test. Training noise is not
in it (another `train.seed` trains another model).

{headline}

| metric | mean per image | pooled over pixels |
|---|---|---|
{rows}{text["per_class"]}

## Known limits
- {text["limits"]} The network sees {describe(split_info.image_size, split_info.resize)} (mean test
  Dice there {input_size_dice:.4f}); masks at a photo's full size are upscaled from its output,
  so thin structures (fingers, hair) are coarse.
- Worst test images (see the gallery artifact `evaluation/gallery.png`):
{worst_lines}

## Parameters
| key | value |
|---|---|
{param_lines}
"""
