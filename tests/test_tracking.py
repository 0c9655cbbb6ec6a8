from pathlib import Path

import pytest
import torch

from pipeline import tracking
from pipeline.core.config import parse_config
from pipeline.core.errors import TrackingError, TrainingError
from pipeline.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    RUN_CHECKPOINT_PATH,
    connect,
    data_report_tags,
    dvc_experiment_tags,
    git_commit,
    project_root,
    run_url,
    source_commit,
    split_dataset,
    tracking_uri,
    train_tracked,
)
from pipeline.train.loop import train_one_epoch
from tests.helpers.httpserver import closed_port_url
from tests.helpers.modelstore import FakeSession


def test_project_root_is_dvc_root_else_the_working_directory(tmp_path: Path, monkeypatch):
    workspace = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert project_root() == workspace.resolve()  # run by hand: where it runs
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "proj"))  # what DVC passes to a queued experiment
    assert project_root() == (tmp_path / "proj").resolve()


def test_default_store_is_an_absolute_sqlite_file_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmp1"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri() == "http://tracking.example:5000"


def test_closed_tracking_port_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_url().rsplit("/", 1)[0])
    with pytest.raises(TrackingError, match="is unreachable: ConnectionError.*unset MLFLOW_TRACKING_URI"):
        connect("anything")


def test_the_experiment_opens_as_model_training_and_a_chosen_kind_is_kept(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    created = connect("new")
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    # One made before the pipeline marked its experiments gets the kind; one set by hand keeps its own.
    untagged = client.create_experiment("untagged")
    assert connect("untagged") == untagged
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert connect("chosen") == chosen
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_an_account_that_may_not_tag_the_experiment_still_connects(tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    untagged = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("shared")

    def refuse(*args, **kwargs):
        raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", refuse)
    assert connect("shared") == untagged
    assert "left without its kind tag: PERMISSION_DENIED" in capsys.readouterr().out


def test_data_report_numbers_are_tags_written_as_numbers_read():
    headline = {"data_pairs_used": 290.0, "data_pairs_skipped": 0.0, "data_test_foreground": 0.2713456789}
    assert data_report_tags(headline) == {
        "data_pairs_used": "290",
        "data_pairs_skipped": "0",
        "data_test_foreground": "0.271346",
    }
    assert data_report_tags({"data_val_foreground": 1.13e-06}) == {"data_val_foreground": "1.13e-06"}


def test_cuda_out_of_memory_suggests_a_batch_size_that_fits():
    class Exhausted(torch.nn.Module):
        def forward(self, images):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    loader = [(torch.zeros(16, 3, 8, 8), torch.zeros(16, 1, 8, 8))]
    model = Exhausted()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(
        TrainingError, match=r"out of memory at epoch 3, step 1 with a batch of 16 .*train.batch_size=8"
    ):
        train_one_epoch(model, loader, torch.nn.MSELoss(), optimizer, torch.device("cpu"), epoch=3)


def test_dvc_experiment_tags_come_from_what_dvc_passes(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert dvc_experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "lr-small")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    assert dvc_experiment_tags() == {"dvc.exp_name": "lr-small", "dvc.baseline_rev": "a" * 40}


def test_run_url_points_at_the_server_or_the_local_ui(monkeypatch, tmp_path):
    import mlflow

    mlflow.set_tracking_uri("http://tracking.example:5000/")
    assert run_url("3", "abc") == "http://tracking.example:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run_url("3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


@pytest.mark.parametrize(
    ("source", "source_type", "name"),
    [
        ("https://example.com/data/people.zip", "http", "people.zip"),
        ("~/data/human-seg.zip", "local", "human-seg.zip"),
        ("synthetic:96", "code", "synthetic:96"),
        ("synthetic-lines:8", "code", "synthetic-lines:8"),
    ],
)
def test_training_data_is_an_mlflow_dataset_with_source_digest_and_counts(source, source_type, name):
    import json

    from pipeline.core.classes import PERSON
    from pipeline.core.splits import SplitInfo

    info = SplitInfo("f" * 64, 64, PERSON, {"train": 203, "val": 58, "test": 29}, {}, "squash", {})
    dataset = split_dataset(source, info).to_dict()
    assert (dataset["source_type"], dataset["name"], dataset["digest"]) == (source_type, name, "f" * 16)
    assert source in dataset["source"]
    assert json.loads(dataset["profile"]) == {"train": 203, "val": 58, "test": 29}


def test_source_commit_is_mlflows_tag_and_the_hand_written_one_only_without_it(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "git_commit", lambda: "abc123-dirty")
    assert source_commit({"mlflow.source.git.commit": "f00d", "mlflow.user": "me"}) == "f00d"
    assert source_commit({"mlflow.user": "me"}) == "abc123-dirty"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # not a git checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit() == "unknown"


def test_train_tracked_records_commit_data_and_checkpoint_and_continues_a_resumed_run(params, tmp_path, monkeypatch):
    import mlflow

    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "git_commit", lambda: "fallback-commit")
    cfg = parse_config(params)
    experiment_id = connect("unit")
    best = tmp_path / "best.pt"
    best.write_bytes(b"weights")

    run_id, run_experiment = train_tracked(cfg, FakeSession(best), experiment_id, {"data_pairs_used": 4})
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run_experiment == experiment_id and run.info.status == "FINISHED"
    tags = run.data.tags
    # MLflow's own commit where it set one, the hand-written one only where it did not.
    assert tags["git_commit"] == tags.get("mlflow.source.git.commit", "fallback-commit")
    assert (tags["data_hash"], tags["encoder_weights_sha256"]) == ("f" * 64, "e" * 64)
    # The data report's numbers are tags, not one-point metrics charted above the curves.
    assert run.data.tags["data_pairs_used"] == "4"
    assert [name for name in run.data.metrics if not name.startswith("system/")] == ["val_loss"]
    assert [artifact.path for artifact in client.list_artifacts(run_id, "checkpoint")] == [RUN_CHECKPOINT_PATH]

    # A resumed session continues its run: the epoch a crash kept from MLflow (2) is caught up.
    history = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}]
    resumed = FakeSession(best, run_id=run_id, history=history)
    assert train_tracked(cfg, resumed, experiment_id, {"data_pairs_used": 4}) == (run_id, experiment_id)
    assert [metric.step for metric in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3]
    assert client.get_run(run_id).data.tags["git_commit"] == tags["git_commit"]
