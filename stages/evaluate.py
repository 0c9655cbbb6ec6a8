"""Stage evaluate: score models/best.pt, register it, decide its alias.

Reads:  models/best.pt, models/run.json, data/split/; params evaluate.threshold,
        evaluate.tta, mlflow.experiment, mlflow.registered_model; the training run in MLflow
Writes: models/model.onnx (verified against PyTorch: metrics/export.json), metrics/evaluate.json,
        metrics/threshold_sweep.csv, metrics/test_per_image.csv, metrics/confusion.csv,
        metrics/confusion.png, metrics/gallery.png,
        models/inference.json, models/model_card.md, models/registry.json; a new registered
        version and its alias (champion or challenger, decided on validation Dice)
"""

from pipeline.core.stage import exit_interrupted, run_stage

# Ctrl-C during the seconds torch and MLflow take to load: one line, not a traceback.
try:
    import mlflow

    from pipeline.core import paths
    from pipeline.core.config import Config, load_config
    from pipeline.core.files import sha256_file, write_csv, write_json, write_png, write_text
    from pipeline.core.splits import SplitInfo
    from pipeline.evaluate.card import render_card
    from pipeline.evaluate.confusion import CONFUSION_FIELDS, confusion_rows, render_confusion
    from pipeline.evaluate.export import export_verified
    from pipeline.evaluate.gallery import CASES_EACH, render_gallery
    from pipeline.evaluate.predictions import PER_IMAGE_FIELDS, SplitPredictions, load_for_evaluation, predict_split
    from pipeline.evaluate.registry import (
        SELECTION_DESCRIPTION,
        SELECTION_METRIC,
        Contender,
        apply_decision,
        current_champion,
        decide_alias,
        register_model,
        version_tags,
    )
    from pipeline.evaluate.thresholds import SWEEP_FIELDS, best_threshold, sweep
    from pipeline.serve.settings import InferenceSettings
    from pipeline.tracking import DATA_SOURCE_TAG, ENCODER_WEIGHTS_TAG, RunInfo, log_to_run, require_run
except KeyboardInterrupt:
    exit_interrupted("evaluate")


def choose_threshold(cfg: Config, val: SplitPredictions) -> tuple[float | None, list[dict[str, float]], str]:
    """The binary cut-off and the validation sweep behind it. Multi-class models take the top
    class: no threshold, an empty sweep, and evaluate.threshold does not apply."""
    if not val.classes.binary:
        return None, [], "each pixel takes its most probable class"
    # The curve is drawn for a fixed threshold too: it shows what that choice costs on val.
    curve = sweep(val.logits, val.masks, val.classes)
    if cfg.evaluate.threshold == "auto":
        return best_threshold(curve), curve, "maximises mean Dice on the validation split"
    return cfg.evaluate.threshold, curve, "fixed by evaluate.threshold"


def main() -> None:
    cfg = load_config()
    run = RunInfo.load(paths.RUN_INFO)
    require_run(run, cfg.mlflow.experiment)
    split_info = SplitInfo.read(paths.SPLIT_DIR)
    model, loss_fn, device = load_for_evaluation(paths.BEST_CHECKPOINT)

    val = predict_split(model, loss_fn, paths.SPLIT_DIR, "val", device, cfg.evaluate.tta)
    threshold, curve, source = choose_threshold(cfg, val)
    test = predict_split(model, loss_fn, paths.SPLIT_DIR, "test", device, cfg.evaluate.tta)
    classes = test.classes
    metrics = test.scores(threshold)
    # The champion decision's score: the deployable model (threshold, TTA) on the validation split.
    val_dice = val.metrics(threshold).compute()["dice"]
    if classes.binary:
        metrics.update(threshold=threshold, val_dice_at_threshold=val_dice)
    settings = InferenceSettings(threshold, cfg.evaluate.tta, sha256_file(paths.BEST_CHECKPOINT))
    # First: a model whose export disagrees with PyTorch writes, logs and registers nothing.
    export = export_verified(model, paths.ONNX_MODEL, settings, test, split_info.image_size)
    per_image = test.per_image(threshold)
    dice = [row["dice"] for row in per_image]

    write_csv(paths.THRESHOLD_SWEEP, curve, SWEEP_FIELDS)
    write_csv(paths.TEST_PER_IMAGE, per_image, PER_IMAGE_FIELDS)
    confusion = test.metrics(threshold).confusion
    write_csv(paths.CONFUSION_TABLE, confusion_rows(confusion, classes), CONFUSION_FIELDS)
    write_png(paths.CONFUSION_IMAGE, render_confusion(confusion, classes))
    write_png(
        paths.GALLERY,
        render_gallery(test.images, test.masks[:, 0].numpy(), test.predicted_masks(threshold), test.ids, dice, classes),
    )
    settings.save_beside(paths.BEST_CHECKPOINT)
    training_tags = mlflow.get_run(run.run_id).data.tags
    card = render_card(
        registered_model=cfg.mlflow.registered_model,
        run_id=run.run_id,
        encoder_weights_sha256=training_tags.get(ENCODER_WEIGHTS_TAG),
        params=cfg.flat(),
        split_info=split_info,
        metrics=metrics,
        threshold_source=source,
        worst=sorted(per_image, key=lambda row: row["dice"])[:CASES_EACH],
        classes=classes,
        data_source=training_tags.get(DATA_SOURCE_TAG, "an unrecorded source"),
        selection=(
            f"`{SELECTION_METRIC}` {val_dice:.4f}: the {SELECTION_DESCRIPTION} on the {split_info.counts['val']} "
            "validation images decides whether this version becomes `champion` (strictly higher than the "
            "champion's on the same validation set) or `challenger`."
        ),
    )
    write_text(paths.MODEL_CARD, card)
    write_json(paths.EVALUATE_METRICS, metrics)
    write_json(paths.EXPORT_METRICS, export.to_dict())
    print(
        "evaluate: " + "  ".join(f"{key} {value:.4f}" for key, value in metrics.items() if not key.endswith("_pooled"))
    )
    print(f"evaluate: exported {paths.ONNX_MODEL}; onnxruntime vs PyTorch fp32 on test: {export.summary()}")

    log_to_run(
        run,
        {**metrics, **export.run_metrics()},
        cfg.mlflow.experiment,
        artifacts=[
            paths.THRESHOLD_SWEEP,
            paths.TEST_PER_IMAGE,
            paths.CONFUSION_TABLE,
            paths.CONFUSION_IMAGE,
            paths.GALLERY,
            paths.MODEL_CARD,
        ],
    )
    name = cfg.mlflow.registered_model
    tags = version_tags(training_tags, split_info, metrics, val_dice)
    version = register_model(
        run_id=run.run_id,
        name=name,
        checkpoint=paths.BEST_CHECKPOINT,
        onnx_model=paths.ONNX_MODEL,
        card=paths.MODEL_CARD,
        settings=settings,
        tags=tags,
    )
    decision = decide_alias(Contender(version, val_dice, tags["val_set"]), current_champion(name))
    apply_decision(name, run.run_id, decision)
    write_json(
        paths.REGISTRY_DECISION,
        {"registered_model": name, **decision.to_dict(), "metric_description": SELECTION_DESCRIPTION},
    )
    print(f"evaluate: registered {name} version {version}; alias {decision.alias}: {decision.reason}")


if __name__ == "__main__":
    run_stage("evaluate", main, __doc__)
