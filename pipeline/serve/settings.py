"""The settings evaluate chooses for a checkpoint (threshold, TTA), stored beside it, which
predict and the served model apply."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import ModelError
from ..core.files import read_json, sha256_file, write_json

SETTINGS_FILE = "inference.json"


@dataclass(frozen=True)
class InferenceSettings:
    """The probability cut-off and TTA a checkpoint was evaluated with, and so must be used with.
    Multi-class models have no cut-off (``threshold`` None): each pixel takes its top class."""

    threshold: float | None
    tta: bool
    checkpoint_sha256: str

    def __post_init__(self) -> None:
        # These come from files and registered models anyone may have written: check them.
        threshold_ok = self.threshold is None or (
            isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool) and 0 < self.threshold < 1
        )
        if not threshold_ok or not isinstance(self.tta, bool) or not isinstance(self.checkpoint_sha256, str):
            raise ValueError(
                f"threshold must be null or in (0, 1), tta true or false, checkpoint_sha256 a string; got {self}"
            )

    def save_beside(self, checkpoint: Path) -> None:
        write_json(checkpoint.parent / SETTINGS_FILE, asdict(self))

    @classmethod
    def beside(cls, checkpoint: Path) -> InferenceSettings | None:
        """The settings evaluate wrote next to ``checkpoint``; None if there are none for this very file."""
        path = checkpoint.parent / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            settings = cls(**read_json(path))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{path}: not inference settings written by the evaluate stage ({exc})") from None
        # A retrained checkpoint whose evaluation has not run yet must not inherit the old threshold.
        return settings if settings.checkpoint_sha256 == sha256_file(checkpoint) else None
