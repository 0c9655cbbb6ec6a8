"""Stage evaluate: models/best.pt on the test split -> metrics/evaluate.json, logged to the training run."""

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.config import load_config
from pipeline.evaluation import evaluate_checkpoint
from pipeline.io import write_json
from pipeline.tracking import RunInfo, log_to_run


def main() -> None:
    cfg = load_config()
    metrics = evaluate_checkpoint(paths.BEST_CHECKPOINT, paths.SPLIT_DIR, "test", cfg.evaluate.threshold)
    write_json(paths.EVALUATE_METRICS, metrics)
    run = RunInfo.load(paths.RUN_INFO)
    log_to_run(run, metrics, cfg.mlflow.experiment)
    print("evaluate: " + "  ".join(f"{key} {value:.4f}" for key, value in metrics.items() if not key.endswith("_pooled")))


if __name__ == "__main__":
    run_stage("evaluate", main)
