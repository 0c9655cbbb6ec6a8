"""Files of a registered version, fetched without loading the model: its code is never imported
or run, so a version anyone with registry access logged cannot run code on this machine."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
from ruamel.yaml import YAML, YAMLError

from ..core.errors import ModelError
from ..tracking import tracking_uri


def _description(model_ref: str, dst: Path) -> dict[str, Any]:
    """The python_function flavour of the version's MLmodel (its config and artifacts)."""
    try:
        path = Path(mlflow.artifacts.download_artifacts(f"{model_ref}/MLmodel", dst_path=str(dst)))
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


def registered_artifact(model_ref: str, name: str, dst: Path) -> tuple[dict[str, Any], Path | None]:
    """The pyfunc's config (threshold, TTA, ...) and its artifact ``name`` downloaded into ``dst``
    (None if the version has no such artifact)."""
    mlflow.set_tracking_uri(tracking_uri())
    flavour = _description(model_ref, dst)
    config = flavour.get("config") or {}
    entry = (flavour.get("artifacts") or {}).get(name)
    if entry is None:
        return config, None
    try:
        relative = PurePosixPath(entry["path"])
    except (KeyError, TypeError):
        raise ModelError(f"--model {model_ref}: artifact {name!r} in its MLmodel has no path") from None
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelError(f"--model {model_ref}: artifact {name!r} points outside the model ({relative})")
    try:
        return config, Path(mlflow.artifacts.download_artifacts(f"{model_ref}/{relative}", dst_path=str(dst)))
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(f"--model {model_ref}: {exc.message.splitlines()[0]}") from None
