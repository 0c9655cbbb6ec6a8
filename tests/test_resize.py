"""data.resize: longest keeps a photo's aspect, and whatever the network says over the padding
never reaches a mask or a score."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.core.classes import PERSON
from pipeline.core.errors import ModelError
from pipeline.core.resizing import content_shape, pad_to, padded_shape
from pipeline.core.splits import SplitInfo, load_split, read_photo_size_masks, write_photo_size_mask
from pipeline.evaluate.predictions import Batch, PhotoSizeScores, SplitScores, load_for_evaluation, predict_batches
from pipeline.model.metrics import SegmentationMetrics
from pipeline.model.outputs import class_probabilities
from pipeline.serve.onnx_backend import OnnxSegmenter
from pipeline.serve.segmenter import Segmenter
from pipeline.serve.settings import InferenceSettings
from pipeline.serve.torch_backend import TorchSegmenter
from pipeline.train.loop import validate
from tests.helpers.datasets import build_test_split
from tests.helpers.modelstore import tiny_checkpoint, tiny_onnx

# A 3:1 photo (height 40, width 120) at S = 96: 32 x 96 at the network's scale, no padding
# needed for inference; at S = 64, 21 x 64, padded to 32 x 64.
WIDE = (40, 120)


def test_longest_keeps_the_aspect_and_pads_to_multiples_of_32():
    assert content_shape(WIDE, 96, "longest") == (32, 96)
    assert content_shape(WIDE, 64, "longest") == (21, 64)
    assert content_shape((120, 40), 64, "longest") == (64, 21)
    assert content_shape(WIDE, 64, "squash") == (64, 64)
    assert padded_shape((21, 64)) == (32, 64) and padded_shape((32, 96)) == (32, 96)


def test_padding_mirrors_the_content_below_and_to_the_right():
    content = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = pad_to(content, (5, 6))
    assert np.array_equal(padded[:3, :4], content)
    assert padded[3].tolist() == [4, 5, 6, 7, 6, 5]  # row 1 mirrored about row 2
    assert padded[:, 4].tolist() == [2, 6, 10, 6, 2]


class Recording(Segmenter):
    """Its foreground probability is 0.2 over a photo's content and ``outside`` beyond it; it
    records the shapes it was fed."""

    backend = "recording"

    def __init__(self, *args, outside: float, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "outside", outside)
        object.__setattr__(self, "fed", [])

    def network_probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.fed.append(batch.shape)
        height, width = content_shape(WIDE, self.image_size, self.resize)
        out = np.full((len(batch), 1, *batch.shape[1:3]), self.outside, np.float32)
        out[:, :, :height, :width] = 0.2
        return out


def test_longest_gives_a_mask_of_the_photos_size_and_nothing_from_the_padding():
    photo = np.random.default_rng(0).integers(0, 256, (*WIDE, 3), dtype=np.uint8)
    results = []
    for outside in (0.2, 0.9):
        segmenter = Recording(64, "longest", 0.5, False, PERSON, outside=outside)
        [probabilities] = segmenter.probabilities([photo])
        assert segmenter.fed == [(1, 32, 64, 3)]  # padded to the next multiple of 32, not to 64 x 64
        results.append(probabilities)
    assert results[0].shape == WIDE
    assert np.array_equal(results[0], results[1])  # 0.9 over the padding changed nothing
    assert np.allclose(results[0], 0.2)


def test_photos_of_different_shapes_run_in_groups_of_one_shape():
    segmenter = Recording(64, "longest", 0.5, False, PERSON, outside=0.9)
    wide, tall = np.zeros((*WIDE, 3), np.uint8), np.zeros((120, 40, 3), np.uint8)
    masks = segmenter.probabilities([wide, tall, wide])
    assert sorted(segmenter.fed) == [(1, 64, 32, 3), (2, 32, 64, 3)]
    assert [mask.shape for mask in masks] == [WIDE, (120, 40), WIDE]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_tiny_longest_model_masks_a_3_to_1_photo_at_its_size_in_both_backends(tmp_path, backend):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", image_size=64, resize="longest")
    if backend == "torch":
        segmenter = TorchSegmenter.load(checkpoint, device="cpu")
    else:
        onnx_file = tiny_onnx(checkpoint, InferenceSettings(0.5, False, ""), tmp_path / "model.onnx")
        segmenter = OnnxSegmenter.load(onnx_file, device="cpu")
    assert (segmenter.image_size, segmenter.resize) == (64, "longest")
    photo = np.random.default_rng(1).integers(0, 256, (*WIDE, 3), dtype=np.uint8)
    [mask] = segmenter.masks([photo])
    assert mask.shape == WIDE and set(np.unique(mask)) <= {0, 255}
    # What the network says over the padding is not in the probabilities: they are those of the
    # content alone, resized to the photo.
    content = cv2.resize(photo, (64, 21), interpolation=cv2.INTER_AREA)
    [network] = segmenter.network_probabilities(pad_to(content, (32, 64))[None])
    expected = cv2.resize(network[0, :21, :64], (120, 40), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(segmenter.probabilities([photo])[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("resize", "message"),
    [
        ("stretch", r"best\.pt: resize 'stretch' in its metadata: unknown resize mode; choose one of: squash, longest"),
        (None, r"best\.pt: records no resize mode \(squash, longest\)"),
    ],
)
def test_a_checkpoint_that_does_not_say_how_it_resizes_is_refused(tmp_path, resize, message):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", resize=resize)
    with pytest.raises(ModelError, match=message):
        TorchSegmenter.load(checkpoint, device="cpu")


def wide_dataset(root: Path) -> Path:
    """Ten 3:1 photos (40 x 120) whose left half is the person."""
    rng = np.random.default_rng(2)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for index in range(10):
        mask = np.zeros(WIDE, np.uint8)
        mask[:, :60] = 255
        cv2.imwrite(str(root / "images" / f"{index:03d}.png"), rng.integers(0, 256, (*WIDE, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "masks" / f"{index:03d}.png"), mask)
    return root


def test_the_split_stores_squares_with_the_photo_at_the_top_left_and_its_mirror_below(tmp_path):
    split = build_test_split(wide_dataset(tmp_path / "raw"), tmp_path, 64, 0.2, 0.2, resize="longest")
    info = SplitInfo.read(split)
    assert info.resize == "longest"
    assert info.content_shapes("test") == [(21, 64)] * 2
    images, masks = load_split(split, "train")
    assert images.shape[1:] == (64, 64, 3) and masks.shape[1:] == (64, 64)
    photo = cv2.cvtColor(
        cv2.imread(str(tmp_path / "raw" / "images" / f"{info.ids['train'][0]}.png")), cv2.COLOR_BGR2RGB
    )
    assert np.array_equal(images[0][:21], cv2.resize(photo, (64, 21), interpolation=cv2.INTER_AREA))
    assert np.array_equal(images[0][21:41], images[0][19::-1][:20])  # mirrored about row 20
    assert (masks[0][:, :32] == 1).all() and (masks[0][:, 32:] == 0).all()  # the left half, all the way down
    assert [mask.shape for mask in read_photo_size_masks(split, "test", 2)] == [WIDE] * 2


def test_scores_do_not_count_the_padding():
    truth = torch.zeros(1, 1, 4, 4)
    truth[..., :2, :2] = 1
    logits = torch.where(truth > 0, 5.0, -5.0)
    logits[..., 2:, :] = 5.0  # wrong everywhere below the content, two rows high
    padded, cut = SegmentationMetrics(0.5, PERSON), SegmentationMetrics(0.5, PERSON)
    padded.update(logits, truth)
    cut.update(logits, truth, [(2, 4)])
    assert padded.compute()["dice"] == pytest.approx(2 * 4 / (2 * 4 + 8)) and padded.confusion.sum() == 16
    assert cut.compute()["dice"] == 1.0 and cut.confusion.tolist() == [[4, 0], [0, 4]]


class Echo(nn.Module):
    """Its logits are the first channel of its input."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1]


def test_validation_scores_each_image_over_its_own_content():
    # Three images over two batches; each network output is right on its content, wrong below it.
    truth = torch.zeros(3, 1, 4, 4)
    images = torch.full((3, 3, 4, 4), -5.0)
    content = [(4, 4), (2, 4), (1, 4)]
    for index, (height, _) in enumerate(content):
        images[index, :, height:] = 5.0
    loader = DataLoader(TensorDataset(images, truth), batch_size=2)
    metrics = SegmentationMetrics(0.5, PERSON)
    validate(Echo(), loader, nn.BCEWithLogitsLoss(), torch.device("cpu"), metrics, "val", content=content)
    assert metrics.compute()["dice"] == 1.0  # nothing predicted, nothing true, over every content


def test_evaluate_scores_a_wide_photo_as_predict_runs_it_not_on_the_stored_square(tmp_path):
    # The stored square's probabilities say "person" everywhere; predict runs the 21 x 64 content
    # padded to 32 x 64, where the network says "background" over the content.
    segmenter = Recording(64, "longest", 0.5, False, PERSON, outside=0.9)
    probabilities = class_probabilities(torch.full((1, 1, 64, 64), 5.0), PERSON)
    batch = Batch(0, np.zeros((1, 64, 64, 3), np.uint8), torch.zeros(1, 1, 64, 64), probabilities, 0.0, [(21, 64)])
    network = SplitScores("test", ["a"], PERSON, (0.5,))
    write_photo_size_mask(tmp_path, "test", 0, np.zeros(WIDE, np.uint8))
    at_photo_size = PhotoSizeScores(network, tmp_path, segmenter)
    network.update(batch)
    at_photo_size.update(batch)
    assert segmenter.fed == [(1, 32, 64, 3)]
    scores = at_photo_size.scores()
    assert scores["test_dice"] == 1.0 and scores["test_precision"] == 1.0  # nothing predicted, nothing true
    assert network.scores_at_input_size(0.5)["test_precision_at_input_size"] == 0.0


def test_evaluate_scores_the_masks_predict_writes_for_the_same_photos(tmp_path):
    split = build_test_split(wide_dataset(tmp_path / "raw"), tmp_path, 64, 0.2, 0.2, resize="longest")
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", image_size=64, resize="longest")
    model, loss_fn, device = load_for_evaluation(checkpoint)
    segmenter = TorchSegmenter.load(checkpoint, device="cpu")
    ids = SplitInfo.read(split).ids["test"]
    network = SplitScores("test", ids, PERSON, (0.5,))
    at_photo_size = PhotoSizeScores(network, split, segmenter)
    for batch in predict_batches(model, loss_fn, split, "test", device, False):
        network.update(batch)
        at_photo_size.update(batch)
    rows = at_photo_size.per_image()
    for row, id_, truth in zip(rows, ids, read_photo_size_masks(split, "test", len(ids)), strict=True):
        photo = cv2.imread(str(tmp_path / "raw" / "images" / f"{id_}.png"))[:, :, ::-1]
        [predicted] = segmenter.class_maps([np.ascontiguousarray(photo)])
        hits = int((predicted & truth).sum())
        assert row["dice"] == pytest.approx(2 * hits / (int(predicted.sum()) + int(truth.sum())), abs=1e-6)
