"""The ONNX export: what the file computes and says about itself, and the check that refuses a bad one."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline.core.classes import ClassSpec
from pipeline.core.errors import ModelError
from pipeline.evaluate import export
from pipeline.evaluate.predictions import EVAL_BATCH_SIZE, Batch
from pipeline.model.checkpoint import load_model
from pipeline.serve.onnx_backend import OnnxSegmenter
from pipeline.serve.settings import InferenceSettings, ModelDescription, read_description
from tests.helpers.modelstore import tiny_checkpoint

THREE = ClassSpec.of(["background", "ellipse", "ring"], [[0, 0, 0], [255, 0, 0], [0, 0, 255]])


def _test_split(model, classes: ClassSpec, tta: bool, count: int = 11, size: int = 64) -> list[Batch]:
    """What evaluate feeds the export check: batches of test photos and PyTorch fp32 probabilities for them."""
    images = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        probabilities = export.ExportedNetwork(model, classes, tta)(torch.from_numpy(images))
    masks = torch.zeros(count, 1, size, size)
    return [
        Batch(start, images[start:end], masks[start:end], probabilities[start:end], 0.0, [(size, size)] * (end - start))
        for start, end in ((start, start + EVAL_BATCH_SIZE) for start in range(0, count, EVAL_BATCH_SIZE))
    ]


def _verified(model, path, settings: InferenceSettings, classes: ClassSpec, test: list[Batch]) -> export.ExportCheck:
    with export.verified_export(model, path, settings, classes, 32, "squash") as comparison:
        for batch in test:
            comparison.update(batch)
    return comparison.check()


@pytest.mark.parametrize(("classes", "tta"), [(ClassSpec.of(["background", "person"], None), True), (THREE, False)])
def test_export_runs_any_batch_and_size_and_agrees_with_pytorch(tmp_path, classes, tta):
    model, _ = load_model(tiny_checkpoint(tmp_path / "best.pt", classes=classes))
    threshold = 0.5 if classes.binary else None
    settings = InferenceSettings(threshold, tta, "ab" * 32)
    check = _verified(model, tmp_path / "model.onnx", settings, classes, _test_split(model, classes, tta))
    assert check.mask_agreement >= 0.999 and check.max_abs_probability_diff < 1e-4
    assert (check.images, check.pixels) == (11, 11 * 64 * 64)  # two batches, every image

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["classes"] == list(classes.names) and meta["threshold"] == threshold and meta["tta"] is tta
    assert meta["palette"] == classes.to_dict()["palette"] and meta["image_size"] == 32
    assert meta["opset"] == export.OPSET and "TorchScript" in meta["exporter"]
    assert meta["checkpoint_sha256"] == "ab" * 32 and "uint8 RGB" in meta["input"]
    for shape in [(1, 32, 160, 3), (3, 96, 64, 3)]:
        images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        got = session.run(["probabilities"], {"image": images})[0]
        with torch.no_grad():
            want = export.ExportedNetwork(model, classes, tta)(torch.from_numpy(images)).numpy()
        assert got.shape == (shape[0], classes.channels, shape[1], shape[2])
        assert np.abs(got - want).max() < 1e-4
        if not classes.binary:
            assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # softmax inside the graph


def test_the_export_is_checked_on_the_first_images_of_a_larger_test_split(tmp_path):
    classes = ClassSpec.of(["background", "person"], None)
    model, _ = load_model(tiny_checkpoint(tmp_path / "best.pt", classes=classes))
    count = export.EXPORT_CHECK_IMAGES + 2 * EVAL_BATCH_SIZE + 3
    test = _test_split(model, classes, False, count=count, size=32)
    check = _verified(model, tmp_path / "model.onnx", InferenceSettings(0.5, False, "ab" * 32), classes, test)
    assert (check.images, check.pixels) == (export.EXPORT_CHECK_IMAGES, export.EXPORT_CHECK_IMAGES * 32 * 32)


def test_a_tampered_graph_is_measured_and_refused(tmp_path, monkeypatch):
    classes = ClassSpec.of(["background", "person"], None)
    model, _ = load_model(tiny_checkpoint(tmp_path / "best.pt"))
    test = _test_split(model, classes, tta=False)
    reference = torch.cat([batch.probabilities for batch in test])
    threshold = float(reference.median())  # about half the pixels are foreground
    settings = InferenceSettings(threshold, False, "")
    graph = export.onnx_graph(model, classes, settings, 32, "squash")
    # Every probability 1: the masks agree exactly where PyTorch says foreground.
    bias = next(init for init in graph.graph.initializer if init.name.endswith("segmentation_head.0.bias"))
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1000, bias.name))
    onnx.save(graph, tmp_path / "tampered.onnx")

    comparison = export.ExportComparison(tmp_path / "tampered.onnx", threshold)
    for batch in test:
        comparison.update(batch)
    check = comparison.check()
    assert check.mask_agreement == pytest.approx(float((reference >= threshold).float().mean()))
    assert check.max_abs_probability_diff == pytest.approx(float(1 - reference.min()), abs=1e-6)

    monkeypatch.setattr(export, "onnx_graph", lambda *args: graph)
    with pytest.raises(ModelError, match=r"disagrees with PyTorch fp32: mask agreement \d+\.\d+% of 45056") as caught:
        _verified(model, tmp_path / "model.onnx", settings, classes, test)
    assert "was not written" in str(caught.value)
    assert not (tmp_path / "model.onnx").exists()


def test_the_onnx_backend_refuses_files_that_are_not_pipeline_exports(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.onnx: onnxruntime cannot load it"):
        OnnxSegmenter.load(tmp_path / "junk.onnx")
    model, _ = load_model(tiny_checkpoint(tmp_path / "best.pt"))
    graph = export.onnx_graph(
        model, ClassSpec.of(["background", "person"], None), InferenceSettings(0.5, False, ""), 32, "squash"
    )
    del graph.metadata_props[:]
    onnx.save(graph, tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match="bare.onnx: not an ONNX model exported by this pipeline"):
        OnnxSegmenter.load(tmp_path / "bare.onnx")


@pytest.fixture(scope="module")
def exported_graph(module_folder) -> onnx.ModelProto:
    root = module_folder("graph")
    model, _ = load_model(tiny_checkpoint(root / "best.pt"))
    return export.onnx_graph(
        model, ClassSpec.of(["sky", "cloud"], None), InferenceSettings(0.3, True, "cd" * 32), 64, "longest"
    )


def test_the_one_reader_gives_back_what_the_export_wrote(exported_graph, tmp_path):
    onnx.save(exported_graph, tmp_path / "model.onnx")
    description = read_description(tmp_path / "model.onnx")
    assert description == ModelDescription(
        InferenceSettings(0.3, True, "cd" * 32), ClassSpec.of(["sky", "cloud"], None), 64, "longest"
    )
    segmenter = OnnxSegmenter.load(tmp_path / "model.onnx")
    assert (segmenter.threshold, segmenter.tta, segmenter.image_size, segmenter.resize) == (0.3, True, 64, "longest")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("format", '"someone-else/v9"', "exported in format 'someone-else/v9'"),
        ("threshold", "1.5", "threshold must be null or in"),
        ("threshold", "null", "a binary model without a threshold"),
        ("tta", '"yes"', "tta true or false"),
        ("image_size", "33", "image_size 33 in its metadata is not a multiple of 32"),
        ("image_size", "1e9", "image_size 1000000000.0 in its metadata"),
        (
            "resize",
            '"stretch"',
            "resize 'stretch' in its metadata: unknown resize mode; choose one of: squash, longest",
        ),
        ("classes", '["only"]', "at least two class names"),
        ("classes", "{not json", "holds values that are not JSON"),
    ],
)
def test_tampered_metadata_is_refused_naming_the_file(exported_graph, tmp_path, key, value, message):
    graph = onnx.ModelProto()
    graph.CopyFrom(exported_graph)
    onnx.helper.set_model_props(graph, {**{entry.key: entry.value for entry in graph.metadata_props}, key: value})
    onnx.save(graph, tmp_path / "tampered.onnx")
    with pytest.raises(ModelError, match=re.escape(message)) as raised:
        read_description(tmp_path / "tampered.onnx")
    assert str(raised.value).startswith(f"{tmp_path / 'tampered.onnx'}: ")
