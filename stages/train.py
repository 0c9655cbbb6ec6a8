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
    from pipeline.core.config import Config, load_config
    from pipeline.core.files import read_json, write_json
    from pipeline.tracking import ENCODER_WEIGHTS_TAG, RunInfo, connect, data_report_metrics, git_commit, training_run
    from pipeline.train import distributed
    from pipeline.train.session import NoTracker, TrainingSession, summary
except KeyboardInterrupt:
    exit_interrupted("train")


def train_tracked(cfg: Config, session: TrainingSession, experiment_id: str) -> None:
    tags = {"git_commit": git_commit(), "data_hash": session.split_info.data_hash}
    if session.encoder_weights_sha256:
        tags[ENCODER_WEIGHTS_TAG] = session.encoder_weights_sha256
    with training_run(
        cfg, experiment_id, run_id=session.state.run_id, tags=tags, split_info=session.split_info
    ) as tracker:
        session.state.run_id = tracker.run_id
        tracker.catch_up(session.state.history)
        try:
            state = session.fit(tracker)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(session.interrupted_note()) from None
        write_json(paths.TRAIN_METRICS, summary(state))
        tracker.log_metrics(data_report_metrics(read_json(paths.DATA_REPORT)["headline"]))
        tracker.log_checkpoint(paths.BEST_CHECKPOINT)
    run = RunInfo(tracker.run_id, tracker.experiment_id)
    run.save(paths.RUN_INFO)
    # The evaluate stage registers the model, once its threshold and test metrics are known.
    print(f"train: best epoch {state.best_epoch} (run {run.run_id})")


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
        if main_process:
            print(
                f"train: {session.resume_note}; device {session.device}, {session.precision.name}, "
                f"{session.topology.world_size} process(es)"
            )
            train_tracked(cfg, session, experiment_id)
        else:
            session.fit(NoTracker())
    finally:
        distributed.teardown()


if __name__ == "__main__":
    run_stage("train", main, __doc__)
