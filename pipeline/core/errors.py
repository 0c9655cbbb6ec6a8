"""Errors whose message already names the file or key at fault and says what to do.

Stage entry points print these without a traceback; anything else is a bug and keeps its.
"""


class PipelineError(Exception):
    """Base of every expected, user-actionable failure."""


class ConfigError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


class FetchError(PipelineError):
    """The dataset source could not be fetched or did not match its manifest."""


class DataError(PipelineError, ValueError):
    """A dataset file is missing, unreadable or inconsistent."""


class ModelError(PipelineError):
    """Pretrained weights or a checkpoint are missing, unreadable or do not fit the model."""


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be used."""


class TrainingError(PipelineError):
    """Training cannot go on (non-finite loss, unusable device)."""
