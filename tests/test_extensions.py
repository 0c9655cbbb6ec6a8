"""Extension points by name: the layouts and losses params.yaml can choose register where they
are defined; every registered loss trains, and the config refuses what does not exist or does
not fit, naming the key."""

import re

import pytest
import torch

from pipeline.core.classes import PERSON, ClassSpec
from pipeline.core.config import parse_config
from pipeline.core.errors import ConfigError, ModelError
from pipeline.core.extensions import AUTO, Registry
from pipeline.evaluate.predictions import load_for_evaluation
from pipeline.model.checkpoint import save_checkpoint
from pipeline.model.losses import LOSSES, DiceBCELoss, DiceCELoss, LovaszLoss, build_loss
from pipeline.model.network import build_model
from pipeline.split.layouts import LAYOUTS, layout_problem
from tests.helpers.modelstore import TINY_MODEL, tiny_checkpoint

THREE = ClassSpec(("background", "cat", "dog"), None)
BIG = 20.0  # a logit whose sigmoid (or softmax share) is 1 to float precision


def test_a_name_registers_once_and_auto_is_reserved():
    registry: Registry[int] = Registry("train.loss")
    registry.register("one", 1)
    assert dict(registry) == {"one": 1} and registry.choices() == [AUTO, "one"]
    with pytest.raises(ValueError, match="train.loss: 'one' is registered already"):
        registry.register("one", 2)
    with pytest.raises(ValueError, match="train.loss: 'auto' is reserved"):
        registry.register(AUTO, 3)


def test_the_registries_hold_the_shipped_layouts_and_losses_in_order():
    assert list(LAYOUTS) == ["csv", "folders"]  # `auto` tries a pair CSV first
    assert {name: entry.fits for name, entry in LOSSES.items()} == {
        "dice_bce": "binary",
        "dice_ce": "multiclass",
        "focal_dice": "any",
        "lovasz": "any",
    }


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_data_layout_accepts_every_registered_layout_alone_and_with_its_arguments(params, name):
    arguments = ",".join(f"part{index}" for index in range(len(LAYOUTS[name].arguments)))
    for value in (name, f"{name}:{arguments}"):
        params["data"]["layout"] = value
        assert parse_config(params).data.layout == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", None),
        ("csv:lists/train.csv", None),
        ("folders:rgb,annotations", None),
        ("folders:rgb", "folders takes 2 argument(s): folders:<images folder>,<masks folder>, or none"),
        ("csv:a.csv,b.csv", "csv takes 1 argument(s): csv:<file>, or none"),
        ("folders:a,b,c", "folders takes 2"),
        ("csv:", "csv takes 1"),
        ("folders:a,", "folders takes 2"),
        (
            "parquet",
            "unknown layout; use one of: auto, csv, csv:<file>, folders, folders:<images folder>,<masks folder>",
        ),
        ("", "unknown layout"),
        ("auto:x", "unknown layout"),
    ],
)
def test_data_layout_refuses_unknown_layouts_and_wrong_argument_counts_naming_the_key(params, value, expected):
    params["data"]["layout"] = value
    if expected is None:
        assert layout_problem(value) is None and parse_config(params).data.layout == value
    else:
        assert layout_problem(value).startswith(expected)
        with pytest.raises(ConfigError, match=f"data.layout: {re.escape(expected)}"):
            parse_config(params)


def binary_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truth, a confident perfect prediction and a confidently wrong one (N=2, one logit channel)."""
    truth = torch.zeros(2, 1, 4, 4)
    truth[0, 0, :2] = 1
    truth[1, 0, :, :1] = 1
    perfect = (truth * 2 - 1) * BIG
    return truth, perfect, -perfect


def multiclass_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.zeros(2, 4, 4, dtype=torch.long)
    ids[0, :2] = 1
    ids[1, :, :1] = 2
    one_hot = torch.nn.functional.one_hot(ids, 3).permute(0, 3, 1, 2).float()
    perfect = (one_hot * 2 - 1) * BIG
    wrong = perfect.roll(1, dims=1)  # every pixel's top class is the next one
    return ids[:, None].float(), perfect, wrong


@pytest.mark.parametrize("name", ["focal_dice", "lovasz", "auto"])
@pytest.mark.parametrize(("classes", "case"), [(PERSON, binary_case), (THREE, multiclass_case)])
def test_losses_for_any_class_count_reward_right_and_punish_wrong_predictions(name, classes, case):
    truth, perfect, wrong = case()
    loss = build_loss(name, classes)
    assert float(loss(perfect, truth)) == pytest.approx(0, abs=1e-3)
    assert float(loss(wrong, truth)) > 0.5


def fitting(name: str) -> list[ClassSpec]:
    return [
        classes
        for classes in (PERSON, THREE)
        if LOSSES[name].fits in ("any", "binary" if classes.binary else "multiclass")
    ]


@pytest.mark.parametrize(
    ("name", "classes"),
    [(name, classes) for name in LOSSES for classes in fitting(name)],
    ids=lambda value: value if isinstance(value, str) else f"{value.count}-classes",
)
def test_every_registered_loss_trains_a_tiny_model_one_step(name, classes):
    # A 1x1 convolution stands in for the U-Net: what is tested is the loss's gradient.
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, classes.channels, kernel_size=1)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    images = torch.randn(2, 3, 8, 8)
    masks = torch.randint(0, classes.count, (2, 1, 8, 8)).float()
    loss = build_loss(name, classes)(model(images), masks)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))


def test_every_registered_loss_fits_some_class_count():
    assert all(fitting(name) for name in LOSSES)


def test_auto_is_dice_bce_for_two_classes_and_dice_ce_for_more_bit_for_bit():
    truth, perfect, _ = binary_case()
    logits = perfect * 0.01 + torch.randn(perfect.shape, generator=torch.Generator().manual_seed(0))
    assert type(build_loss("auto", PERSON)) is DiceBCELoss and type(build_loss("auto", THREE)) is DiceCELoss
    assert torch.equal(build_loss("auto", PERSON)(logits, truth), DiceBCELoss()(logits, truth))


@pytest.mark.parametrize(
    ("name", "classes", "expected"),
    [
        ("dice_bce", ["background", "a", "b"], "'dice_bce' is for binary models (two classes), but data.classes has 3"),
        (
            "dice_ce",
            ["background", "person"],
            "'dice_ce' is for models of more than two classes, but data.classes has 2",
        ),
    ],
)
def test_a_loss_that_does_not_fit_the_classes_fails_at_start_up_naming_train_loss(params, name, classes, expected):
    params["train"]["loss"] = name
    params["data"]["classes"] = classes
    with pytest.raises(ConfigError) as caught:
        parse_config(params)
    assert f"train.loss: {expected}; use one of: auto, " in str(caught.value)
    with pytest.raises(ConfigError, match=f"train.loss: {re.escape(expected)}"):
        build_loss(name, ClassSpec.of(classes, None))


def test_an_unknown_loss_is_refused_naming_the_choices(params):
    params["train"]["loss"] = "hinge"
    with pytest.raises(ConfigError, match="train.loss: unknown loss; choose one of: auto, dice_bce, dice_ce"):
        parse_config(params)


def test_evaluation_rebuilds_the_loss_the_checkpoint_names(tmp_path):
    save_checkpoint(tmp_path / "lovasz.pt", build_model(TINY_MODEL, THREE), TINY_MODEL, THREE, loss="lovasz")
    _, loss_fn, _ = load_for_evaluation(tmp_path / "lovasz.pt")
    assert type(loss_fn) is LovaszLoss and not loss_fn.binary
    # A binary checkpoint written with train.loss: auto records the default it resolved to.
    _, loss_fn, _ = load_for_evaluation(tiny_checkpoint(tmp_path / "auto.pt"))
    assert type(loss_fn) is DiceBCELoss


def test_a_checkpoint_without_its_loss_or_classes_is_refused_naming_what_it_lacks(tmp_path):
    path = tiny_checkpoint(tmp_path / "partial.pt")
    payload = torch.load(path, weights_only=True)
    del payload["loss"], payload["classes"]
    torch.save(payload, path)
    with pytest.raises(ModelError, match="partial.pt: checkpoint lacks classes, loss; use a checkpoint written by"):
        load_for_evaluation(path)


@pytest.mark.parametrize("recorded", ["hinge", ["dice_bce"], "dice_ce"])  # unknown, not a name, misfit (binary)
def test_a_checkpoint_naming_a_loss_it_cannot_have_is_a_clear_error(tmp_path, recorded):
    save_checkpoint(tmp_path / "odd.pt", build_model(TINY_MODEL, PERSON), TINY_MODEL, PERSON, loss=recorded)
    with pytest.raises(ModelError, match="odd.pt: records a loss this pipeline cannot build for its classes"):
        load_for_evaluation(tmp_path / "odd.pt")
