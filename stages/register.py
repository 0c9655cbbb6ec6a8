"""Stage register: register the evaluated model as a new version and decide its alias.

Reads:  models/model.onnx, models/best.pt, models/model_card.md, metrics/evaluate.json,
        metrics/val_per_image.csv, models/evaluation_run.json, data/split/; params
        mlflow.experiment, mlflow.registered_model; the champion's val_per_image.csv from its
        evaluation run
Writes: models/registry.json; the servable model logged into the evaluation run, a new version
        of mlflow.registered_model and its alias (champion only when its per-image validation
        Dice minus the champion's, image by image, has a bootstrap interval above zero;
        otherwise challenger)
"""

from pipeline.core.stage import exit_interrupted, run_stage

# Ctrl-C during the seconds MLflow takes to load: one line, not a traceback.
try:
    from pipeline.core import paths
    from pipeline.core.config import load_config
    from pipeline.core.files import write_json
    from pipeline.core.splits import SplitInfo
    from pipeline.register.registry import EvaluatedModel, register_evaluated
    from pipeline.tracking import RunInfo, require_run, training_run_of
except KeyboardInterrupt:
    exit_interrupted("register")


def main() -> None:
    cfg = load_config()
    name = cfg.mlflow.registered_model
    evaluation = RunInfo.load(paths.EVALUATION_RUN)
    require_run(evaluation, cfg.mlflow.experiment)
    training_tags = require_run(training_run_of(evaluation), cfg.mlflow.experiment)
    evaluated = EvaluatedModel.read()
    split_info = SplitInfo.read(paths.SPLIT_DIR)
    decision, retired = register_evaluated(name, evaluation.run_id, evaluated, training_tags, split_info)
    write_json(paths.REGISTRY_DECISION, decision.record(name))
    if retired:
        print(f"register: deleted {name} version(s) {', '.join(retired)}, left incomplete by an interrupted run")
    print(f"register: {name} version {decision.version}; alias {decision.alias}: {decision.reason}")


if __name__ == "__main__":
    run_stage("register", main, __doc__)
