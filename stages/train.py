"""Stage train: train the network, one MLflow run per training.

Reads:  data/split/, data/report.json, models/pretrained/, models/last.pt (to resume);
        params data.source, data.image_size, model.*, train.*, mlflow.experiment
Writes: models/best.pt, models/last.pt (resume checkpoint, not a DVC output), models/run.json,
        metrics/train.json, metrics/history.csv (after every epoch); an MLflow run

Also the entry point for multi-GPU training: `torchrun --nproc_per_node=N stages/train.py`.
"""

from pipeline.core.stage import exit_interrupted, run_stage

# Ctrl-C during the seconds torch and MLflow take to load: one line, not a traceback.
try:
    from pipeline.core import paths
    from pipeline.core.config import load_config
    from pipeline.core.files import read_json, write_json
    from pipeline.tracking import RunInfo, connect, train_tracked
    from pipeline.train import distributed
    from pipeline.train.session import NoTracker, TrainingSession
except KeyboardInterrupt:
    exit_interrupted("train")


def main() -> None:
    cfg = load_config()
    main_process = distributed.is_main_process()
    # Before loading anything: a dead tracking server must cost seconds, not a training run.
    experiment_id = connect(cfg.mlflow.experiment) if main_process else None
    session = TrainingSession(
        cfg,
        split_dir=paths.SPLIT_DIR,
        pretrained_dir=paths.PRETRAINED_DIR,
        best_path=paths.BEST_CHECKPOINT,
        last_path=paths.LAST_CHECKPOINT,
        history_path=paths.TRAIN_HISTORY,
    )
    try:
        if not main_process:
            session.fit(NoTracker())
            return
        print(f"train: {session.describe()}")
        result = train_tracked(cfg, session, experiment_id, read_json(paths.DATA_REPORT)["headline"])
    finally:
        distributed.teardown()
    write_json(paths.TRAIN_METRICS, result.metrics)
    RunInfo(result.run_id, result.experiment_id).save(paths.RUN_INFO)
    # The register stage registers the model, once evaluate has chosen its threshold and scored it.
    print(f"train: best epoch {result.best_epoch} (run {result.run_id})")


if __name__ == "__main__":
    run_stage("train", main, __doc__)
