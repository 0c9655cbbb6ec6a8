import pytest
import torch

from pipeline.metrics import DiceBCELoss, SegmentationMetrics

BIG = 20.0  # a logit whose sigmoid is 1 to float precision


def logits_from(prediction: list[list[int]]) -> torch.Tensor:
    return (torch.tensor(prediction, dtype=torch.float32) * 2 - 1)[None, None] * BIG


def test_perfect_prediction_has_zero_loss_and_perfect_scores():
    mask = torch.tensor([[1, 0], [0, 0]], dtype=torch.float32)[None, None]
    assert float(DiceBCELoss()(logits_from([[1, 0], [0, 0]]), mask)) == pytest.approx(0, abs=1e-6)
    metrics = SegmentationMetrics(0.5)
    metrics.update(logits_from([[1, 0], [0, 0]]), mask)
    assert metrics.compute()["dice"] == 1.0 and metrics.compute()["iou"] == 1.0


def test_loss_is_dice_plus_bce_on_a_hand_made_case():
    # Predict the left column, truth is the top row: TP=1, FP=1, FN=1 -> soft Dice 0.5;
    # two confidently wrong pixels out of four -> BCE = 2 * 20 / 4 = 10.
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.float32)[None, None]
    loss = DiceBCELoss()(logits_from([[1, 0], [1, 0]]), mask)
    assert float(loss) == pytest.approx(0.5 + 10.0, rel=1e-4)


def test_metric_values_and_both_reductions():
    metrics = SegmentationMetrics(0.5)
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


def test_empty_truth_predicted_empty_counts_as_perfect():
    metrics = SegmentationMetrics(0.5)
    metrics.update(logits_from([[0, 0], [0, 0]]), torch.zeros(1, 1, 2, 2))
    assert metrics.compute()["dice"] == 1.0


def test_threshold_is_applied_to_probabilities():
    metrics = SegmentationMetrics(0.9)
    metrics.update(torch.full((1, 1, 2, 2), 1.0), torch.ones(1, 1, 2, 2))  # sigmoid(1) = 0.73 < 0.9
    assert metrics.compute()["recall"] == 0.0
