import pytest
import torch

from pipeline.core.classes import PERSON, ClassSpec
from pipeline.model.losses import DiceBCELoss, DiceCELoss, build_loss
from pipeline.model.metrics import METRIC_FUNCTIONS, SegmentationMetrics

BIG = 20.0  # a logit whose sigmoid is 1 to float precision


def logits_from(prediction: list[list[int]]) -> torch.Tensor:
    return (torch.tensor(prediction, dtype=torch.float32) * 2 - 1)[None, None] * BIG


def test_perfect_prediction_has_zero_loss_and_perfect_scores():
    mask = torch.tensor([[1, 0], [0, 0]], dtype=torch.float32)[None, None]
    assert float(DiceBCELoss()(logits_from([[1, 0], [0, 0]]), mask)) == pytest.approx(0, abs=1e-6)
    metrics = SegmentationMetrics(0.5, PERSON)
    metrics.update(logits_from([[1, 0], [0, 0]]), mask)
    assert metrics.compute()["dice"] == 1.0 and metrics.compute()["iou"] == 1.0


def test_loss_is_dice_plus_bce_on_a_hand_made_case():
    # Predict the left column, truth is the top row: TP=1, FP=1, FN=1 -> soft Dice 0.5;
    # two confidently wrong pixels out of four -> BCE = 2 * 20 / 4 = 10.
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.float32)[None, None]
    loss = DiceBCELoss()(logits_from([[1, 0], [1, 0]]), mask)
    assert float(loss) == pytest.approx(0.5 + 10.0, rel=1e-4)


def test_metric_values_and_both_reductions():
    metrics = SegmentationMetrics(0.5, PERSON)
    truth = torch.tensor([[[[1, 1], [0, 0]]], [[[1, 1], [1, 1]]]], dtype=torch.float32)
    prediction = torch.cat([logits_from([[1, 0], [1, 0]]), logits_from([[1, 1], [1, 1]])])
    metrics.update(prediction, truth)
    scores = metrics.compute()
    # Image 1: TP1 FP1 FN1 TN1 -> Dice 0.5, IoU 1/3, accuracy .5; image 2 perfect.
    assert scores["dice"] == pytest.approx((0.5 + 1) / 2)
    assert scores["iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(0.75)
    # Pooled: TP5 FP1 FN1 TN1.
    assert scores["dice_pooled"] == pytest.approx(10 / 12)
    assert scores["precision_pooled"] == pytest.approx(5 / 6)
    assert scores["recall_pooled"] == pytest.approx(5 / 6)
    assert metrics.per_image("dice").tolist() == pytest.approx([0.5, 1.0])


def test_the_latest_updates_scores_are_the_tail_of_every_images_scores():
    metrics = SegmentationMetrics(0.5, PERSON)
    with pytest.raises(ValueError, match="no batches were scored"):
        metrics.latest_per_image()
    metrics.update(logits_from([[1, 0], [1, 0]]), torch.tensor([[1.0, 1], [0, 0]])[None, None])
    assert metrics.latest_per_image("dice").tolist() == [0.5]
    truth = torch.tensor([[[[1.0, 1], [1, 1]]], [[[0, 0], [0, 1]]]])
    metrics.update(torch.cat([logits_from([[1, 1], [1, 1]]), logits_from([[0, 0], [0, 0]])]), truth)
    assert metrics.latest_per_image("iou").tolist() == metrics.per_image("iou")[1:].tolist() == [1.0, 0.0]


def test_empty_truth_predicted_empty_counts_as_perfect():
    metrics = SegmentationMetrics(0.5, PERSON)
    metrics.update(logits_from([[0, 0], [0, 0]]), torch.zeros(1, 1, 2, 2))
    assert metrics.compute()["dice"] == 1.0


def test_threshold_is_applied_to_probabilities():
    metrics = SegmentationMetrics(0.9, PERSON)
    metrics.update(torch.full((1, 1, 2, 2), 1.0), torch.ones(1, 1, 2, 2))  # sigmoid(1) = 0.73 < 0.9
    assert metrics.compute()["recall"] == 0.0


THREE = ClassSpec(("background", "cat", "dog"), None)


def logits_for_classes(class_ids: list[list[int]], count: int = 3) -> torch.Tensor:
    """N=1 x C x H x W logits whose top class is ``class_ids``, confidently."""
    one_hot = torch.nn.functional.one_hot(torch.tensor(class_ids), count).permute(2, 0, 1).float()
    return (one_hot * 2 - 1)[None] * BIG


def test_multiclass_loss_is_zero_for_a_perfect_prediction_and_grows_with_errors():
    truth = torch.tensor([[0, 1], [2, 2]], dtype=torch.float32)[None, None]
    loss = build_loss("auto", THREE)
    assert isinstance(loss, DiceCELoss) and isinstance(build_loss("auto", PERSON), DiceBCELoss)
    assert float(loss(logits_for_classes([[0, 1], [2, 2]]), truth)) == pytest.approx(0, abs=1e-6)
    # One pixel of four confidently wrong: cross-entropy 2 * BIG / 4 = 10, plus a Dice term.
    assert float(loss(logits_for_classes([[0, 1], [2, 1]]), truth)) > 10


def test_multiclass_metrics_per_class_their_mean_and_the_confusion_matrix():
    metrics = SegmentationMetrics(None, THREE)
    truth = torch.tensor([[[[0, 1], [2, 2]]], [[[0, 0], [0, 0]]]], dtype=torch.float32)
    metrics.update(torch.cat([logits_for_classes([[0, 1], [2, 1]]), logits_for_classes([[0, 0], [0, 0]])]), truth)
    scores = metrics.compute()
    # Image 1: background perfect; cat TP1 FP1 -> Dice 2/3, IoU 1/2; dog TP1 FN1 -> Dice 2/3, IoU 1/2.
    # Image 2: only background, predicted so: every class scores 1 (absent and not predicted).
    assert scores["dice_background"] == 1.0
    assert scores["dice_cat"] == pytest.approx((2 / 3 + 1) / 2) and scores["dice_dog"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["iou_cat"] == pytest.approx(0.75) and scores["iou_dog"] == pytest.approx(0.75)
    # The headline is the mean over the foreground classes, as binary's is the foreground's score.
    assert scores["dice"] == pytest.approx((2 / 3 + 1) / 2) and scores["iou"] == pytest.approx(0.75)
    # Pooled over both images: cat TP1 FP1 FN0, dog TP1 FP0 FN1 -> Dice 2/3 each.
    assert scores["dice_pooled"] == pytest.approx(2 / 3)
    assert metrics.per_image("dice").tolist() == pytest.approx([2 / 3, 1.0])
    assert metrics.confusion.tolist() == [[5, 0, 0], [0, 1, 0], [0, 1, 1]]  # rows truth, columns prediction


def test_binary_metrics_keep_their_names_and_count_a_confusion_matrix():
    metrics = SegmentationMetrics(0.5, PERSON)
    metrics.update(logits_from([[1, 0], [1, 0]]), torch.tensor([[1, 1], [0, 0]], dtype=torch.float32)[None, None])
    assert set(metrics.compute()) == {f"{name}{suffix}" for name in METRIC_FUNCTIONS for suffix in ("", "_pooled")}
    assert metrics.confusion.tolist() == [[1, 1], [1, 1]]
