"""Files of a registered version, fetched without loading the model: its code is never imported
or run, so a version anyone with registry access logged cannot run code on this machine."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import requests
from ruamel.yaml import YAML, YAMLError

from ..core.errors import ModelError
from ..tracking import HEALTH_TIMEOUT_S, tracking_uri

# The registered version's artifact that holds the weights, for `predict --backend torch`
# (pipeline/register/registry.py logs it); the ONNX file's is onnx_backend.ONNX_ARTIFACT.
CHECKPOINT_ARTIFACT = "checkpoint"
# Set on a registered version last, once it has its tags, card and alias: a version without it
# was cut short while registering and is not used.
COMPLETE_TAG = "registration_complete"


def _description(model_ref: str, root: str, dst: Path) -> dict[str, Any]:
    """The python_function flavour of the model's MLmodel (its config and artifacts), under ``root``."""
    try:
        path = Path(mlflow.artifacts.download_artifacts(f"{root}/MLmodel", dst_path=str(dst)))
        spec = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
        flavour = spec["flavors"]["python_function"]
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(f"--model {model_ref}: {exc.message.splitlines()[0]}") from None
    except (KeyError, TypeError, YAMLError):
        raise ModelError(
            f"--model {model_ref}: not a python_function model (its MLmodel has no such flavour)"
        ) from None
    if not isinstance(flavour, dict):
        raise ModelError(f"--model {model_ref}: its MLmodel's python_function flavour is not a mapping")
    return flavour


def _check_reachable(model_ref: str) -> None:
    """Ask the tracking and registry servers once each, within HEALTH_TIMEOUT_S, before MLflow's
    own client, which retries a dead server for minutes in silence."""
    servers = {mlflow.get_registry_uri(): "MLFLOW_REGISTRY_URI", mlflow.get_tracking_uri(): "MLFLOW_TRACKING_URI"}
    for uri, variable in servers.items():
        if not uri.startswith(("http://", "https://")):
            continue
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
        except requests.RequestException as exc:
            raise ModelError(
                f"--model {model_ref}: MLflow server {uri} ({variable}) is unreachable: {type(exc).__name__}; "
                f"start it, or point {variable} at the store that holds the model"
            ) from None


def _require_complete(model_ref: str) -> None:
    """A registered version (by number or alias) is used only once its registration completed."""
    match = re.fullmatch(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/]+))", model_ref)
    if match is None:
        return  # a logged model by id (models:/m-...) or a run's model: not a registered version
    client = mlflow.MlflowClient()
    try:
        found = (
            client.get_model_version(match["name"], match["version"])
            if match["version"]
            else client.get_model_version_by_alias(match["name"], match["alias"])
        )
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(f"--model {model_ref}: {exc.message.splitlines()[0][:200]}") from None
    if COMPLETE_TAG not in found.tags:
        raise ModelError(
            f"--model {model_ref}: version {found.version} of {match['name']} was not registered completely "
            "(its registration was interrupted); run `dvc repro` to register the model again"
        )


def registered_artifacts(model_ref: str, names: tuple[str, ...], dst: Path) -> dict[str, Path | None]:
    """The version's artifacts ``names`` downloaded into ``dst`` (None for one it does not have);
    an unreachable server is refused within seconds."""
    mlflow.set_tracking_uri(tracking_uri())
    _check_reachable(model_ref)
    _require_complete(model_ref)
    root = _artifact_root(model_ref)
    entries = _description(model_ref, root, dst).get("artifacts") or {}
    return {name: _download(model_ref, root, name, entries.get(name), dst) for name in names}


def _artifact_root(model_ref: str) -> str:
    """The URI the model's files are found under. A logged model named by its id
    (``models:/m-...``, as the MLflow UI shows it) is looked up by id: MLflow reads the id of
    ``models:/m-.../MLmodel`` as a registered model's name."""
    match = re.fullmatch(r"models:/(?P<id>m-[0-9a-f]+)/?", model_ref)
    if match is None:
        return model_ref.rstrip("/")
    try:
        return mlflow.get_logged_model(match["id"]).artifact_location.rstrip("/")
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(f"--model {model_ref}: {exc.message.splitlines()[0][:200]}") from None


def _download(model_ref: str, root: str, name: str, entry: Any, dst: Path) -> Path | None:
    if entry is None:
        return None
    try:
        relative = PurePosixPath(entry["path"])
    except (KeyError, TypeError):
        raise ModelError(f"--model {model_ref}: artifact {name!r} in its MLmodel has no path") from None
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelError(f"--model {model_ref}: artifact {name!r} points outside the model ({relative})")
    try:
        return Path(mlflow.artifacts.download_artifacts(f"{root}/{relative}", dst_path=str(dst)))
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(f"--model {model_ref}: {exc.message.splitlines()[0]}") from None
