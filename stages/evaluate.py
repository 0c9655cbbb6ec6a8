"""Stage evaluate: score models/best.pt on validation and test, export and verify it.

Reads:  models/best.pt, models/run.json, data/split/; params evaluate.threshold,
        evaluate.tta, mlflow.experiment; the training run in MLflow
Writes: models/model.onnx (verified against PyTorch: metrics/export.json; its metadata is the
        one record of the threshold, TTA and classes), metrics/evaluate.json (the headline
        scores with their intervals), metrics/evaluate_details.json (every other score),
        metrics/val_per_image.csv, metrics/threshold_sweep.csv, metrics/test_per_image.csv,
        metrics/confusion.csv, metrics/confusion.png, metrics/gallery.png, models/model_card.md;
        all logged into a new evaluation run nested under the training run, named in
        models/evaluation_run.json.
        The register stage registers what this wrote.
"""

from pipeline.core.stage import exit_interrupted, run_stage

# Ctrl-C during the seconds torch and MLflow take to load: one line, not a traceback.
try:
    from pipeline.core import paths
    from pipeline.core.config import load_config
    from pipeline.evaluate.evaluation import REPORTS, evaluate_checkpoint
    from pipeline.tracking import RunInfo, card_provenance, log_evaluation, require_run
except KeyboardInterrupt:
    exit_interrupted("evaluate")


def main() -> None:
    cfg = load_config()
    run = RunInfo.load(paths.RUN_INFO)
    training_tags = require_run(run, cfg.mlflow.experiment)
    evaluation = evaluate_checkpoint(cfg, run.run_id, **card_provenance(training_tags))
    print(evaluation.summary())
    params = {key: value for key, value in cfg.flat().items() if key.startswith("evaluate.")}
    record = log_evaluation(run, cfg.mlflow.experiment, params, evaluation.run_metrics(), artifacts=list(REPORTS))
    record.save(paths.EVALUATION_RUN)


if __name__ == "__main__":
    run_stage("evaluate", main, __doc__)
