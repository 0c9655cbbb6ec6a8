import numpy as np
import pytest
import torch

from pipeline.core.classes import PERSON, ClassSpec
from pipeline.core.intervals import bootstrap_mean
from pipeline.core.splits import write_photo_size_mask
from pipeline.evaluate.gallery import (
    BACKGROUND,
    CASES_EACH,
    GAP,
    PANEL,
    SWATCH,
    SWATCH_BORDER,
    SWATCH_TOP,
    Case,
    GalleryCases,
    legend_swatches,
    pick_cases,
    render_gallery,
)
from pipeline.evaluate.predictions import (
    EVAL_BATCH_SIZE,
    HEADLINE_METRICS,
    PER_IMAGE_FIELDS,
    Batch,
    PhotoSizeScores,
    SplitScores,
    interval_bounds,
)
from pipeline.evaluate.thresholds import SWEEP_THRESHOLDS, best_threshold, mark_chosen, sweep, sweep_thresholds
from pipeline.model.metrics import SegmentationMetrics
from pipeline.model.outputs import class_probabilities, predict_logits
from pipeline.serve.palette import (
    BINARY_OVERLAY,
    DISTINCT_COLOURS,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    TRUE_POSITIVE,
    TRUTH,
)
from pipeline.serve.segmenter import Segmenter


class StoredOnly(Segmenter):
    """For splits whose arrays are what predict feeds the network: no network runs."""

    backend = "stored"

    def network_probabilities(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("the stored logits were to be scored")


def logits_of(probabilities: list[float]) -> torch.Tensor:
    p = torch.tensor(probabilities, dtype=torch.float64)
    return torch.log(p / (1 - p)).float().reshape(1, 1, 1, -1)


def batches_of(truth: torch.Tensor, logits: torch.Tensor, classes: ClassSpec, loss: float = 0.0) -> list[Batch]:
    """What predict_batches yields for a split of these truths and logits (and black photos)."""
    photos = np.zeros((truth.shape[0], *truth.shape[2:], 3), np.uint8)
    probabilities = class_probabilities(logits, classes)
    content = [tuple(truth.shape[-2:])] * len(truth)  # no padding
    return [
        Batch(start, photos[start:end], truth[start:end], probabilities[start:end], loss, content[start:end])
        for start, end in ((start, start + EVAL_BATCH_SIZE) for start in range(0, len(truth), EVAL_BATCH_SIZE))
    ]


def scored(
    truth: torch.Tensor,
    logits: torch.Tensor,
    classes: ClassSpec,
    thresholds: tuple[float | None, ...],
    ids: list[str] | None = None,
    split: str = "test",
    loss: float = 0.0,
) -> SplitScores:
    """A split of these truths and logits scored batch by batch, as evaluate scores one."""
    scores = SplitScores(split, ids or [str(index) for index in range(len(truth))], classes, thresholds)
    for batch in batches_of(truth, logits, classes, loss):
        scores.update(batch)
    return scores


def scored_at_photo_size(
    network: SplitScores, split_dir, logits: torch.Tensor, truth: torch.Tensor, threshold: float | None
) -> tuple[PhotoSizeScores, list[float]]:
    """The same split at its photos' sizes (their masks in ``split_dir``), and the Dice each update gave."""
    segmenter = StoredOnly(truth.shape[-1], "squash", threshold, False, network.classes)
    at_photo_size = PhotoSizeScores(network, split_dir, segmenter)
    dice = [score for batch in batches_of(truth, logits, network.classes) for score in at_photo_size.update(batch)]
    return at_photo_size, dice


def test_sweep_scores_each_threshold_and_picks_the_best_dice():
    # Truth: the first two pixels. Only a cut-off in (0.58, 0.62] separates them from the rest.
    logits = logits_of([0.9, 0.62, 0.58, 0.1])
    truth = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 1, -1)
    rows = {row["threshold"]: row for row in sweep(scored(truth, logits, PERSON, SWEEP_THRESHOLDS).counted)}
    assert list(rows) == list(SWEEP_THRESHOLDS)
    assert rows[0.5]["dice"] == pytest.approx(0.8)  # TP 2, FP 1: 4 / 5
    assert rows[0.5]["iou"] == pytest.approx(2 / 3)
    assert rows[0.6]["dice"] == 1.0
    assert rows[0.7]["dice"] == pytest.approx(2 / 3)  # TP 1, FN 1
    assert (rows[0.5]["precision"], rows[0.5]["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (rows[0.7]["precision"], rows[0.7]["recall"]) == (1.0, 0.5)
    assert best_threshold(list(rows.values())) == 0.6


def test_a_plateau_resolves_to_the_threshold_nearest_one_half():
    rows = [{"threshold": t, "dice": d, "iou": 0.0} for t, d in [(0.2, 0.9), (0.35, 0.95), (0.45, 0.95), (0.7, 0.95)]]
    assert best_threshold(rows) == 0.45


def test_the_chosen_threshold_is_marked_on_its_row_and_a_fixed_one_gets_a_row():
    rows = [{"threshold": t, "dice": 0.5} for t in (0.4, 0.45, 0.5)]
    assert [row["chosen"] for row in mark_chosen(rows, 0.45)] == [0, 1, 0]
    with pytest.raises(ValueError, match="0.33 is not one of the sweep's"):
        mark_chosen(rows, 0.33)
    assert sweep_thresholds() == SWEEP_THRESHOLDS and sweep_thresholds(0.5) == SWEEP_THRESHOLDS
    between = sweep_thresholds(0.33)
    assert len(between) == len(SWEEP_THRESHOLDS) + 1 and between == tuple(sorted(between)) and 0.33 in between


@pytest.mark.parametrize(("setting", "chosen"), [("auto", 0.6), (0.33, 0.33)])
def test_choose_threshold_writes_the_sweep_with_the_threshold_it_chose_marked(params, setting, chosen):
    from pipeline.core.config import parse_config
    from pipeline.evaluate.evaluation import choose_threshold, counted_thresholds

    params["evaluate"]["threshold"] = setting
    cfg = parse_config(params)
    truth = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 1, -1)
    thresholds = counted_thresholds(cfg, PERSON)
    val = scored(truth, logits_of([0.9, 0.62, 0.58, 0.1]), PERSON, thresholds, split="val")
    threshold, curve, _ = choose_threshold(cfg, val)
    assert [row["threshold"] for row in curve] == list(thresholds)
    assert thresholds == (SWEEP_THRESHOLDS if setting == "auto" else sweep_thresholds(setting))
    assert threshold == chosen
    assert [row["threshold"] for row in curve if row["chosen"]] == [chosen]
    assert sum(row["chosen"] for row in curve) == 1


def test_flip_tta_averages_the_mirrored_prediction():
    ramp = torch.arange(4.0)

    def model(images: torch.Tensor) -> torch.Tensor:  # not mirror-symmetric: adds 0..3 left to right
        return images[:, :1] + ramp

    images = torch.zeros(2, 3, 2, 4)
    assert predict_logits(model, images, tta=False)[0, 0, 0].tolist() == [0, 1, 2, 3]
    assert predict_logits(model, images, tta=True)[0, 0, 0].tolist() == [1.5, 1.5, 1.5, 1.5]


def test_per_image_rows_hold_the_headline_scores_and_foreground_fraction():
    truth = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]]).reshape(2, 1, 1, 4)
    logits = torch.cat([logits_of([0.9, 0.2, 0.8, 0.1]), logits_of([0.1, 0.1, 0.1, 0.1])])
    predictions = scored(truth, logits, PERSON, (0.5,), ids=["a", "b"])
    rows = predictions.per_image(0.5)
    assert [list(row) for row in rows] == [list(PER_IMAGE_FIELDS)] * 2
    assert [row["id"] for row in rows] == ["a", "b"]
    # a: TP 1 (first pixel), FP 1 (third), FN 1 (second).
    assert rows[0]["dice"] == pytest.approx(0.5) and rows[0]["iou"] == pytest.approx(1 / 3)
    assert (rows[0]["precision"], rows[0]["recall"]) == (0.5, 0.5)
    assert rows[0]["foreground_fraction"] == 0.5
    # Empty and predicted empty: perfect.
    assert rows[1] == {"id": "b", "dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "foreground_fraction": 0.0}
    assert predictions.scores(0.5)["test_dice"] == pytest.approx(0.75)


def test_each_headline_score_is_the_mean_of_its_per_image_column_for_a_multiclass_model():
    classes = ClassSpec(("background", "cat", "dog"), None)
    rng = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 3, (6, 1, 4, 4), generator=rng).float()
    logits = torch.randn(6, 3, 4, 4, generator=rng)
    predictions = scored(truth, logits, classes, (None,))
    rows, scores = predictions.per_image(None), predictions.scores(None)
    for name in HEADLINE_METRICS:
        assert np.mean([row[name] for row in rows]) == pytest.approx(scores[f"test_{name}"]), name
    # A row is the image's mean over the classes after background, not over all three.
    assert scores["test_dice"] == pytest.approx((scores["test_dice_cat"] + scores["test_dice_dog"]) / 2)


@pytest.mark.parametrize("classes", [PERSON, ClassSpec(("background", "cat", "dog"), None)])
def test_scores_counted_batch_by_batch_are_those_of_the_whole_split_at_once(classes):
    generator = torch.Generator().manual_seed(1)
    images = 3 * EVAL_BATCH_SIZE + 3  # a short last batch
    truth = torch.randint(0, classes.count, (images, 1, 16, 16), generator=generator).float()
    logits = torch.randn(images, classes.channels, 16, 16, generator=generator)
    thresholds = SWEEP_THRESHOLDS if classes.binary else (None,)
    split = scored(truth, logits, classes, thresholds, loss=0.5)
    assert split.loss == 0.5
    for threshold in thresholds:
        whole = SegmentationMetrics(threshold, classes)
        whole.update(logits, truth)
        counted = split.metrics(threshold)
        assert counted.compute() == whole.compute()  # equal, not close: the same counts reduced the same way
        assert counted.per_image("dice").tolist() == whole.per_image("dice").tolist()
        assert torch.equal(counted.confusion, whole.confusion)


def test_the_gallery_keeps_only_the_images_it_may_pick_and_all_it_picks():
    rng = np.random.default_rng(0)
    images = 5 * EVAL_BATCH_SIZE + 1
    dice = rng.uniform(size=images).round(1).tolist()  # ties, broken by position as pick_cases does
    photos = rng.integers(0, 256, (images, 4, 4, 3), dtype=np.uint8)
    truth = torch.from_numpy(rng.integers(0, 2, (images, 1, 4, 4))).float()
    probabilities = torch.from_numpy(rng.uniform(size=(images, 1, 4, 4))).float()
    gallery = GalleryCases(images)
    for start in range(0, images, EVAL_BATCH_SIZE):
        end = start + EVAL_BATCH_SIZE
        content = [(4, 4)] * len(photos[start:end])
        batch = Batch(start, photos[start:end], truth[start:end], probabilities[start:end], 0.0, content)
        gallery.offer(batch, dice[start:end], 0.5)
        assert len(gallery.kept) <= 2 * CASES_EACH
    picked = [index for _, index in pick_cases(dice)]
    assert len(picked) == 2 * CASES_EACH and set(picked) <= set(gallery.kept)
    for index in picked:
        case = gallery.kept[index]
        assert np.array_equal(case.photo, photos[index]) and np.array_equal(case.truth, truth[index, 0].numpy())
        assert np.array_equal(case.prediction, (probabilities[index, 0] >= 0.5).numpy())
    render_gallery(gallery.kept, [str(index) for index in range(images)], dice, PERSON)


def test_the_gallery_shows_a_wide_photos_content_with_its_aspect_not_the_padded_square():
    # One 2 x 8 photo (content) in its 8 x 8 square, the rest padding the gallery must not show.
    photos = np.zeros((1, 8, 8, 3), np.uint8)
    photos[0, :2] = 200
    truth = torch.ones(1, 1, 8, 8)
    probabilities = torch.ones(1, 1, 8, 8)
    gallery = GalleryCases(1)
    gallery.offer(Batch(0, photos, truth, probabilities, 0.0, [(2, 8)]), [1.0], 0.5)
    case = gallery.kept[0]
    assert case.photo.shape == (2, 8, 3) and case.truth.shape == case.prediction.shape == (2, 8)
    panel = render_gallery(gallery.kept, ["wide"], [1.0], PERSON)[-PANEL - GAP : -GAP, GAP : GAP + PANEL]
    # 8:2 fitted to the panel: 256 x 64, centred; white above and below, the photo between.
    photo_rows = np.flatnonzero((panel != 255).any(axis=(1, 2)))
    assert (photo_rows.min(), photo_rows.max()) == (96, 159)
    assert (panel[96:160] == 200).all()


def test_the_headline_holds_each_score_with_its_interval_and_the_details_the_rest():
    from pipeline.evaluate.evaluation import headline_and_details

    values = [0.2, 0.9, 0.6, 0.8, 0.7]
    rows = [{name: value for name in HEADLINE_METRICS} for value in values]
    scores = {"test_loss": 0.3, "test_pixel_accuracy": 0.9, "test_dice_cat": 0.1}
    scores.update({f"test_{name}": float(np.mean(values)) for name in HEADLINE_METRICS})
    scores.update({f"test_{name}_pooled": 0.5 for name in HEADLINE_METRICS})
    headline, details = headline_and_details(scores, interval_bounds("test", rows))
    assert list(headline) == [
        *(
            f"test_{name}{part}"
            for name in ("dice", "iou", "precision", "recall")
            for part in ("", "_ci_low", "_ci_high")
        ),
        "test_loss",
    ]
    interval = bootstrap_mean(values)
    assert (headline["test_recall_ci_low"], headline["test_recall_ci_high"]) == (interval.low, interval.high)
    assert headline["test_iou_ci_low"] < headline["test_iou"] < headline["test_iou_ci_high"]
    assert details == {
        "test_pixel_accuracy": 0.9,
        "test_dice_cat": 0.1,
        **{f"test_{name}_pooled": 0.5 for name in HEADLINE_METRICS},
    }


def test_the_evaluation_run_records_every_score_and_the_summary_the_headline():
    from pipeline.evaluate.evaluation import Evaluation
    from pipeline.evaluate.export import ExportCheck

    headline = {}
    for index, name in enumerate(HEADLINE_METRICS):
        headline.update({f"test_{name}": 0.8 - index / 10, f"test_{name}_ci_low": 0.7, f"test_{name}_ci_high": 0.9})
    headline.update(test_loss=0.3, threshold=0.45, val_dice_deployed=0.81)
    evaluation = Evaluation(headline, {"test_dice_pooled": 0.85}, ExportCheck(1.13e-06, 1.0, 29, 29 * 64 * 64))
    assert evaluation.run_metrics() == {
        **headline,
        "test_dice_pooled": 0.85,
        "export_max_abs_probability_diff": 1.13e-06,
        "export_mask_agreement": 1.0,
    }
    summary = evaluation.summary()
    assert "test_dice 0.8000 [0.7000, 0.9000]  test_iou 0.7000 [0.7000, 0.9000]  test_precision" in summary
    assert (
        "test_recall 0.5000 [0.7000, 0.9000]  test_loss 0.3000  threshold 0.4500  val_dice_deployed 0.8100\n" in summary
    )
    assert "pooled" not in summary and "ci_low" not in summary


def test_test_scores_at_photo_size_are_those_of_the_resized_probabilities_against_the_full_mask(tmp_path):
    # Network output at 2 x 2: a left column of 0.9 (a right one of 0.1), and 0.1 everywhere. The
    # squashed truths agree with it exactly; the full-size ones (2 x 6, aspect 3:1; 8 x 8 with a
    # 1-px line the squash erased) do not.
    logits = torch.cat([logits_of([0.9, 0.1, 0.9, 0.1]), logits_of([0.1] * 4)]).reshape(2, 1, 2, 2)
    truth = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]]).reshape(2, 1, 2, 2)
    predictions = scored(truth, logits, PERSON, (0.5,), ids=["a", "b"], loss=0.25)
    left_third = np.zeros((2, 6), np.uint8)
    left_third[:, :2] = 1
    line = np.zeros((8, 8), np.uint8)
    line[3] = 1
    for index, mask in enumerate((left_third, line)):
        write_photo_size_mask(tmp_path, "test", index, mask)
    at_photo_size, dice = scored_at_photo_size(predictions, tmp_path, logits, truth, 0.5)
    # Linear interpolation from 2 to 6 columns: 0.9, 0.9, 0.633, 0.367, 0.1, 0.1, so columns 0-2 are
    # the person: a: TP 4, FP 2, FN 0 (Dice 0.8, IoU 2/3); b: predicted empty, TP 0, FN 8 (Dice 0).
    scores = at_photo_size.scores()
    assert scores["test_loss"] == 0.25
    assert scores["test_dice"] == pytest.approx((0.8 + 0) / 2)
    assert scores["test_iou"] == pytest.approx((2 / 3 + 0) / 2)
    assert scores["test_precision"] == pytest.approx((2 / 3 + 1) / 2)  # b predicts nothing: 0/0 counts 1
    assert scores["test_recall"] == pytest.approx((1 + 0) / 2)
    assert scores["test_dice_pooled"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 8))
    assert predictions.scores_at_input_size(0.5)["test_dice_at_input_size"] == 1.0
    assert at_photo_size.per_image() == [
        {
            "id": "a",
            "dice": pytest.approx(0.8),
            "iou": pytest.approx(2 / 3),
            "precision": pytest.approx(2 / 3),
            "recall": 1.0,
            "foreground_fraction": pytest.approx(4 / 12),
        },
        {"id": "b", "dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0, "foreground_fraction": 8 / 64},
    ]
    assert dice == [row["dice"] for row in at_photo_size.per_image()]  # what the gallery picks by
    assert at_photo_size.metrics.confusion.tolist() == [[6 + 56, 2], [8, 4]]
    higher, _ = scored_at_photo_size(predictions, tmp_path, logits, truth, 0.7)
    assert higher.per_image()[0]["dice"] == 1.0  # column 2's interpolated 0.633 is cut off


def test_multi_class_scores_at_photo_size_take_the_top_class_of_the_resized_probabilities(tmp_path):
    classes = ClassSpec(("background", "ellipse", "rectangle"), None)
    # At 2 x 2 the left column is ellipse, the right one rectangle; at 2 x 6 the third column leans left.
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1, :, 0] = logits[0, 2, :, 1] = 4.0
    truth = torch.tensor([1.0, 2, 1, 2]).reshape(1, 1, 2, 2)
    predictions = scored(truth, logits, classes, (None,))
    full = np.array([[1, 1, 2, 2, 2, 2]] * 2, np.uint8)
    write_photo_size_mask(tmp_path, "test", 0, full)
    scores = scored_at_photo_size(predictions, tmp_path, logits, truth, None)[0].scores()
    # Ellipse: predicted in columns 0-2, true in 0-1 (Dice 8/10); rectangle: 3-5 against 2-5 (Dice 12/14).
    assert scores["test_dice_ellipse"] == pytest.approx(0.8)
    assert scores["test_dice_rectangle"] == pytest.approx(12 / 14)
    assert scores["test_dice"] == pytest.approx((0.8 + 12 / 14) / 2)
    assert predictions.scores_at_input_size(None)["test_dice_at_input_size"] == 1.0


@pytest.mark.parametrize("classes", [PERSON, ClassSpec(("background", "cat", "dog"), None)])
def test_val_per_image_rows_are_the_scores_val_dice_deployed_averages(classes):
    from pipeline.evaluate.evaluation import deployed_validation

    generator = torch.Generator().manual_seed(0)
    channels = 1 if classes.binary else classes.count
    truth = torch.randint(0, classes.count, (5, 1, 8, 8), generator=generator).float()
    logits = torch.randn(5, channels, 8, 8, generator=generator)
    ids = ["e", "b", "d", "a", "c"]
    threshold = 0.4 if classes.binary else None
    val = scored(truth, logits, classes, (threshold,), ids=ids, split="val")
    score, rows = deployed_validation(val, threshold)
    assert [list(row) for row in rows] == [["id", "dice"]] * 5 and [row["id"] for row in rows] == ids
    assert np.mean([row["dice"] for row in rows]) == pytest.approx(score, abs=1e-6)
    assert score == val.metrics(threshold).compute()["dice"]
    assert len({row["dice"] for row in rows}) > 1  # images differ: a mean of something


def test_gallery_picks_worst_then_best_without_repeats():
    assert pick_cases([0.5, 0.1, 0.9, 0.3, 0.7], count=2) == [
        ("worst 1", 1),
        ("worst 2", 3),
        ("best 1", 2),
        ("best 2", 4),
    ]
    assert pick_cases([0.4, 0.2, 0.6], count=4) == [("worst 1", 1), ("best 1", 2)]


def test_gallery_colours_false_positives_and_negatives_differently():
    images = np.full((2, 8, 8, 3), 200, np.uint8)
    truth = np.zeros((2, 8, 8), bool)
    truth[:, :, :4] = True  # left half is the person
    prediction = np.zeros((2, 8, 8), bool)
    prediction[:, :4, :] = True  # top half predicted
    cases = {index: Case(images[index], truth[index], prediction[index]) for index in range(2)}
    gallery = render_gallery(cases, ["x", "y"], [0.2, 0.8], PERSON)
    assert gallery.shape[1] == 3 * PANEL + 4 * 6
    row_top = gallery.shape[0] - PANEL - 6  # the last row's panels
    third = 6 + 2 * (PANEL + 6)
    quarter = PANEL // 4

    def colour_at(y: int, x: int) -> np.ndarray:
        return gallery[row_top + y, third + x].astype(int)

    def closest(pixel: np.ndarray) -> tuple[int, int, int]:
        return min((TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE), key=lambda c: np.abs(pixel - np.array(c)).sum())

    assert closest(colour_at(quarter, quarter)) == TRUE_POSITIVE  # top left: true and predicted
    assert closest(colour_at(quarter, 3 * quarter)) == FALSE_POSITIVE  # top right: predicted only
    assert closest(colour_at(3 * quarter, quarter)) == FALSE_NEGATIVE  # bottom left: missed
    assert (colour_at(3 * quarter, 3 * quarter) == 120).all()  # bottom right: dimmed photo, no tint


@pytest.mark.parametrize("classes", [PERSON, ClassSpec(("background", "cat", "dog", "bird"), None)])
def test_every_legend_swatch_stands_out_from_the_legend_background(classes):
    images = np.full((2, 8, 8, 3), 200, np.uint8)
    masks = np.zeros((2, 8, 8), int)
    cases = {index: Case(images[index], masks[index], masks[index]) for index in range(2)}
    gallery = render_gallery(cases, ["x", "y"], [0.2, 0.8], classes)
    swatches = legend_swatches(classes)
    assert {label for _, label, _ in swatches} >= {"correct", "false positive", "false negative"}
    # White ("correct") on the white background would vanish: each colour sits in a dark frame.
    assert (255, 255, 255) in {colour for colour, _, _ in swatches} and BACKGROUND == (255, 255, 255)
    for colour, label, left in swatches:
        box = gallery[SWATCH_TOP : SWATCH_TOP + SWATCH, left : left + SWATCH].astype(int)
        assert box.shape[:2] == (SWATCH, SWATCH), label
        inner = box[SWATCH_BORDER:-SWATCH_BORDER, SWATCH_BORDER:-SWATCH_BORDER]
        assert (inner == colour).all(), label
        ring = np.concatenate([box[:SWATCH_BORDER].reshape(-1, 3), box[-SWATCH_BORDER:].reshape(-1, 3)])
        ring = np.concatenate([ring, box[:, :SWATCH_BORDER].reshape(-1, 3), box[:, -SWATCH_BORDER:].reshape(-1, 3)])
        # WCAG's 3:1 for graphical objects, between the frame and the background around it.
        assert min(contrast(tuple(pixel), BACKGROUND) for pixel in ring) >= 3, label
        # The frame is the swatch's edge: the background shows just outside it.
        assert (gallery[SWATCH_TOP + SWATCH // 2, left - 1] == BACKGROUND).all(), label


def contrast(first: tuple[int, ...], second: tuple[int, ...]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (1 to 21)."""

    def luminance(colour: tuple[int, ...]) -> float:
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in colour)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(first), luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _card(params, data_hash: str, classes, source: str = "https://example.com/people.zip") -> str:
    from pipeline.core.config import parse_config
    from pipeline.core.splits import SplitInfo
    from pipeline.evaluate.card import render_card
    from pipeline.model.metrics import METRIC_FUNCTIONS

    metrics = {f"test_{name}{suffix}": 0.5 for name in METRIC_FUNCTIONS for suffix in ("", "_pooled")}
    metrics.update({f"test_{name}_ci_{bound}": 0.5 for name in HEADLINE_METRICS for bound in ("low", "high")})
    metrics.update(test_dice=0.8125, test_dice_ci_low=0.7801, test_dice_ci_high=0.8664, threshold=0.35)
    metrics.update(test_dice_at_input_size=0.84375)
    return render_card(
        run_id="r1",
        params=parse_config(params).flat(),
        split_info=SplitInfo(data_hash, 320, classes, {"train": 203, "val": 58, "test": 29}, {}, "squash", {}),
        metrics=metrics,
        threshold_source="maximises mean Dice on the validation split",
        worst=[{"id": "260", "dice": 0.267, "foreground_fraction": 0.12}],
        classes=classes,
        data_source=source,
        val_dice=0.8,
    )


def test_model_card_states_data_threshold_metrics_and_worst_cases(params):
    from pipeline.core.classes import PERSON
    from pipeline.evaluate.card import REFERENCE_DATA_HASH

    card = _card(params, REFERENCE_DATA_HASH, PERSON)
    assert REFERENCE_DATA_HASH in card and "203 train, 58 validation,\n29 test images" in card
    assert "Human-Segmentation dataset of photos of people, from `https://example.com/people.zip`" in card
    assert "Person when the predicted probability is at least **0.35** (maximises mean Dice" in card
    assert "| dice | 0.8125 | 0.5000 |" in card
    assert "95% bootstrap interval over the 29 test\nimages" in card
    assert "- Dice 0.812 [0.780, 0.866]\n- IoU 0.500 [0.500, 0.500]\n- precision 0.500 [0.500, 0.500]\n" in card
    assert "(mean test\n  Dice there 0.8438)" in card
    assert "`260`: Dice 0.267, person covers 12% of the image" in card
    assert (
        "## Champion selection\n`val_dice_deployed` 0.8000, the mean per-image Dice at this model's threshold" in card
    )
    assert "on the\n58 validation images" in card or "on the 58 validation images" in card
    assert "only when the bootstrap interval of the mean difference lies above zero" in card
    assert "The test metrics below are a report" in card
    assert "photo editing" in card and "not for identifying people" in card.lower()
    assert "## Known limits" in card and "| `train.lr` | `0.003` |" in card
    # Registering under another name or tracking elsewhere changes nothing the card says.
    assert "mlflow." not in card


def test_model_card_of_another_binary_dataset_names_its_source_and_classes_not_people(params):
    from pipeline.core.classes import ClassSpec

    card = _card(params, "a" * 64, ClassSpec(("sky", "cloud"), None), source="~/data/clouds.zip")
    assert "Binary segmentation (cloud against sky)" in card and "Data from `~/data/clouds.zip`" in card
    assert "`260`: Dice 0.267, cloud covers 12%" in card and "Masks of cloud in images similar" in card
    assert not [word for word in ("person", "people", "Human-Segmentation") if word in card.split("## Parameters")[0]]


def test_confusion_image_draws_every_label_whole(monkeypatch):
    import cv2

    from pipeline.core.classes import ClassSpec
    from pipeline.evaluate import confusion

    drawn = []
    real_put_text = cv2.putText

    def recording(canvas, text, origin, font, scale, colour, thickness, line):
        drawn.append((text, origin[0] + cv2.getTextSize(text, font, scale, thickness)[0][0], canvas.shape[1]))
        return real_put_text(canvas, text, origin, font, scale, colour, thickness, line)

    monkeypatch.setattr(confusion.cv2, "putText", recording)
    classes = ClassSpec(("background", "pedestrian_crossing", "car"), None)
    image = confusion.render_confusion(torch.tensor([[5, 1, 0], [0, 3, 1], [0, 0, 0]]), classes)
    texts = [text for text, _, _ in drawn]
    for name in classes.names:
        assert texts.count(name) == 2, name  # row label and column label, whole
    assert "predicted class" in texts and "true class" in texts
    assert all(right < width for _, right, width in drawn), [entry for entry in drawn if entry[1] >= entry[2]]
    assert (image[:, -2:] == 255).all() and (image[-2:] == 255).all()  # nothing runs into the edges


def test_the_error_colours_are_none_of_the_class_colours():
    # The gallery's legend lists class and error colours side by side: each must read as itself.
    classes = (*DISTINCT_COLOURS, TRUTH, BINARY_OVERLAY)
    errors = (TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE)

    def distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
        return float(np.linalg.norm(np.subtract(a, b)))

    assert min(distance(error, colour) for error in errors for colour in classes) > 100
    assert min(distance(a, b) for index, a in enumerate(errors) for b in errors[index + 1 :]) > 100
