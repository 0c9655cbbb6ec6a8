"""Stage register: register the evaluated model as a new version and decide its alias.

Reads:  models/model.onnx, models/best.pt, models/model_card.md, metrics/evaluate.json,
        models/run.json, data/split/split.json; params mlflow.experiment, mlflow.registered_model
Writes: models/registry.json; the servable model logged into the training run, a new version
        of mlflow.registered_model and its alias (champion or challenger, decided on
        validation Dice)
"""

from pipeline.core.stage import exit_interrupted, run_stage

# Ctrl-C during the seconds MLflow takes to load: one line, not a traceback.
try:
    from pipeline.core import paths
    from pipeline.core.config import load_config
    from pipeline.core.files import write_json
    from pipeline.core.splits import SplitInfo
    from pipeline.register.registry import EvaluatedModel, register_evaluated
    from pipeline.tracking import RunInfo, require_run
except KeyboardInterrupt:
    exit_interrupted("register")


def main() -> None:
    cfg = load_config()
    name = cfg.mlflow.registered_model
    run = RunInfo.load(paths.RUN_INFO)
    training_tags = require_run(run, cfg.mlflow.experiment)
    evaluated = EvaluatedModel.read()
    decision = register_evaluated(name, run.run_id, evaluated, training_tags, SplitInfo.read(paths.SPLIT_DIR))
    write_json(paths.REGISTRY_DECISION, decision.record(name))
    print(f"register: {name} version {decision.version}; alias {decision.alias}: {decision.reason}")


if __name__ == "__main__":
    run_stage("register", main, __doc__)
