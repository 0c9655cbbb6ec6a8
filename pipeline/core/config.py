"""The one typed, validated configuration object, built from ``params.yaml``.

Every key is required and has its single home in ``params.yaml``: the models below
declare types and ranges only, never defaults, so a value cannot drift between the
file and the code. Unknown keys, wrong types and out-of-range values are reported
together, each by its dotted key, before any stage does work.

``data.layout`` and ``train.loss`` name implementations that register where they are defined,
in ``split/layouts.py`` and ``model/losses.py`` (``core/extensions.py``); their validators
import those two modules, the one import of core beyond core, and only when they run, so
that importing this module loads no torch (tests/test_layering.py).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from ruamel.yaml import YAML, YAMLError

from .classes import ClassSpec
from .errors import ConfigError
from .resizing import resize_problem
from .sources import generated_source

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(_Section):
    source: str = Field(min_length=1)
    manifest: str | None
    # How split finds pairs in data/raw: auto, csv, csv:<file>, folders, folders:<images>,<masks>.
    layout: str
    # Background first; two classes is binary segmentation. Names become metric names (test_dice_<name>).
    # At most 255 so that class ids fit the uint8 masks predict writes.
    classes: list[str] = Field(min_length=2, max_length=255)
    # null: masks hold class ids (or 0/255 for two classes); else one [R, G, B] per class, in class order.
    palette: list[list[int]] | None
    on_bad_sample: Literal["error", "skip"]
    image_size: int = Field(ge=32, le=4096)
    # How a photo reaches image_size: squash (to the square) or longest (its longest side, aspect kept).
    resize: str

    @field_validator("source")
    @classmethod
    def _generated_count(cls, value: str) -> str:
        generated_source(value)  # a generator's name with a bad count raises, saying what to write
        return value

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str) -> str:
        from ..split.layouts import layout_problem  # the layouts register there

        problem = layout_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("layout")
    @classmethod
    def _inside_the_dataset(cls, value: str) -> str:
        # The named files are read from the dataset; a path out of it would read any file on the machine.
        for name in value.partition(":")[2].split(",") if ":" in value else ():
            path = PurePosixPath(name.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or Path(name).is_absolute():
                raise ValueError(
                    f"{name!r} must be a path relative to the dataset's top folder, inside it "
                    "(e.g. csv:lists/train.csv)"
                )
        return value

    @field_validator("classes")
    @classmethod
    def _usable_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(
                    f"class name {name!r} must be letters, digits, '_' or '-' (it becomes part of metric names)"
                )
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"class names must be distinct; repeated: {', '.join(repeated)}")
        return value

    @field_validator("palette")
    @classmethod
    def _rgb_colour_per_class(cls, value: list[list[int]] | None, info: ValidationInfo) -> list[list[int]] | None:
        if value is None:
            return value
        classes = info.data.get("classes")  # absent when data.classes itself is invalid
        if classes is not None and len(value) != len(classes):
            raise ValueError(
                f"has {len(value)} colours for {len(classes)} classes; "
                "give one [R, G, B] per entry of data.classes, in the same order"
            )
        for colour in value:
            if len(colour) != 3 or not all(0 <= channel <= 255 for channel in colour):
                raise ValueError(f"each colour must be [R, G, B] with values 0-255, got {colour}")
        if len({tuple(colour) for colour in value}) != len(value):
            raise ValueError("each class needs its own colour; the palette repeats one")
        return value

    def class_spec(self) -> ClassSpec:
        return ClassSpec.of(self.classes, self.palette)

    @field_validator("image_size")
    @classmethod
    def _divisible_by_32(cls, value: int) -> int:
        # U-Net encoders downsample five times; other sizes fail deep inside the decoder.
        if value % 32:
            raise ValueError(f"must be a multiple of 32 (got {value})")
        return value

    @field_validator("resize")
    @classmethod
    def _known_resize(cls, value: str) -> str:
        problem = resize_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class SplitConfig(_Section):
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must stay below 0.9 to leave training data")
        return self


class ModelConfig(_Section):
    arch: str = Field(min_length=1)
    encoder: str = Field(min_length=1)
    encoder_weights: str | None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        import segmentation_models_pytorch as smp

        if value.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
            known = ", ".join(sorted(model.__name__ for model in smp.MODEL_ARCHITECTURES_MAPPING.values()))
            raise ValueError(f"unknown architecture {value!r}; smp has: {known}")
        return value

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        import segmentation_models_pytorch as smp
        import timm

        if value.startswith("tu-"):
            if not timm.is_model(value[3:].split(".")[0]):
                raise ValueError(f"timm has no model {value[3:]!r} (from encoder {value!r})")
        elif value not in smp.encoders.get_encoder_names():
            raise ValueError(
                f"unknown encoder {value!r}; use an smp encoder name (e.g. 'resnet34', "
                "'efficientnet-b0') or a timm model prefixed with 'tu-' (e.g. 'tu-efficientnet_b0')"
            )
        return value


class TrainConfig(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0, le=10)
    seed: int = Field(ge=0)
    num_workers: Literal["auto"] | Annotated[int, Field(ge=0, le=64)]
    device: Literal["auto", "cpu", "cuda"]
    resume: bool
    amp: bool
    compile: bool
    scheduler: Literal["none", "cosine", "onecycle"]
    warmup_epochs: int = Field(ge=0)
    # auto: dice_bce for two classes, dice_ce for more; whether a named loss fits is checked on Config.
    loss: str

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        from ..model.losses import LOSSES  # the losses register there

        if value not in LOSSES.choices():
            raise ValueError(f"unknown loss; choose one of: {', '.join(LOSSES.choices())}")
        return value


class EvaluateConfig(_Section):
    threshold: float | str
    tta: bool

    @field_validator("threshold")
    @classmethod
    def _auto_or_probability(cls, value: float | str) -> float | str:
        # One check instead of a pydantic union, whose errors would name each branch.
        if value == "auto" or (isinstance(value, float) and 0 < value < 1):
            return value
        raise ValueError("must be 'auto' (tuned on the validation split) or a probability strictly between 0 and 1")


# What MLflow refuses in names, encoded here because core does not import mlflow (the rules of
# mlflow.utils.validation, MLflow 3: _validate_experiment_name and _validate_model_name; a test
# holds these against MLflow's own validators). Its SQL stores keep both names in VARCHAR(256)
# columns, which PostgreSQL and MySQL enforce (SQLite does not): the limit that bites first.
MLFLOW_NAME_MAX_LENGTH = 256
MODEL_NAME_FORBIDDEN = ("/", ":")


def experiment_name_problem(name: str) -> str | None:
    """Why MLflow (or its database) would refuse ``name`` as an experiment name; None if it would not."""
    if not name.strip():
        return "must be a name, not blank"
    if len(name) > MLFLOW_NAME_MAX_LENGTH:
        return f"is {len(name)} characters long; MLflow's stores hold at most {MLFLOW_NAME_MAX_LENGTH}"
    return None


def registered_model_name_problem(name: str) -> str | None:
    """Why MLflow (or its database, or a ``models:/NAME@alias`` URI) would refuse ``name`` as a
    registered model name; None if it would not."""
    if not name.strip():
        return "must be a name, not blank"
    found = [char for char in MODEL_NAME_FORBIDDEN if char in name]
    if found:
        shown = " and ".join(repr(char) for char in found)
        fixed = name
        for char in MODEL_NAME_FORBIDDEN:
            fixed = fixed.replace(char, "-")
        return f"contains {shown}: MLflow refuses '/' and ':' in registered model names; write e.g. {fixed!r}"
    if name == "." or name.startswith(".."):
        return "MLflow refuses '.' and names starting with '..' (they read as folders); start with a letter or digit"
    if "?" in name:
        # urllib reads what follows '?' as a query: models:/a?b@champion would look up model 'a'.
        return "contains '?', which cuts the name short in a models:/NAME@champion URI; leave it out"
    if len(name) > MLFLOW_NAME_MAX_LENGTH:
        return f"is {len(name)} characters long; MLflow's registry holds at most {MLFLOW_NAME_MAX_LENGTH}"
    return None


class MlflowConfig(_Section):
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)

    @field_validator("experiment")
    @classmethod
    def _usable_experiment(cls, value: str) -> str:
        problem = experiment_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("registered_model")
    @classmethod
    def _usable_model_name(cls, value: str) -> str:
        problem = registered_model_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Config(_Section):
    data: DataConfig
    split: SplitConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig

    @model_validator(mode="after")
    def _loss_fits_the_classes(self) -> Config:
        from ..model.losses import loss_misfit

        problem = loss_misfit(self.train.loss, len(self.data.classes))
        if problem:
            raise ValueError(f"train.loss: {problem}")
        return self

    def flat(self) -> dict[str, Any]:
        """Every parameter as ``section.key: value``, the form MLflow logs and DVC shows."""
        return {
            f"{section}.{key}": value for section, values in self.model_dump().items() for key, value in values.items()
        }


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if not key:  # a check across sections names its keys itself
        return error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: missing (every key is required; see the README for its meaning)"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error['input']!r})"


def parse_config(raw: Any, origin: str = "params") -> Config:
    if not isinstance(raw, dict):
        sections = ", ".join(Config.model_fields)
        got = "nothing (the file is empty)" if raw is None else f"a {type(raw).__name__}"
        raise ConfigError(f"{origin} must map the sections {sections} to their keys; it holds {got} (see the README)")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  - {_describe(error)}" for error in exc.errors())
        raise ConfigError(f"{origin} is invalid:\n{lines}") from None


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    path = Path(path)
    try:
        # YAML 1.2, as DVC writes it: `dvc exp run -S train.lr=1e-3` must load as a float.
        raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the project root)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(raw, origin=str(path))
