"""Stage train: data/split/ -> models/best.pt, models/run.json, metrics/; one MLflow run."""

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.config import load_config
from pipeline.io import write_csv, write_json
from pipeline.tracking import RunInfo, git_commit, training_run
from pipeline.training import HISTORY_FIELDS, TrainingSession, summary


def main() -> None:
    cfg = load_config()
    session = TrainingSession(
        cfg, split_dir=paths.SPLIT_DIR, pretrained_dir=paths.PRETRAINED_DIR,
        best_path=paths.BEST_CHECKPOINT, last_path=paths.LAST_CHECKPOINT,
    )
    print(f"train: {session.resume_note}; device {session.device}")
    tags = {"git_commit": git_commit(), "data_hash": session.split_info["data_hash"]}
    with training_run(cfg, run_id=session.state.run_id, tags=tags) as tracker:
        session.state.run_id = tracker.run_id
        state = session.fit(tracker)
        write_csv(paths.TRAIN_HISTORY, state.history, HISTORY_FIELDS)
        write_json(paths.TRAIN_METRICS, summary(state))
        tracker.log_checkpoint(paths.BEST_CHECKPOINT)
    run = RunInfo(tracker.run_id, tracker.experiment_id)
    run.save(paths.RUN_INFO)
    # The evaluate stage registers the model, once its threshold and test metrics are known.
    print(f"train: best epoch {state.best_epoch} (run {run.run_id})")


if __name__ == "__main__":
    run_stage("train", main)
