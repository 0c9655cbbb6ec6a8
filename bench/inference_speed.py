"""Inference throughput of `predict`: PyTorch fp32, PyTorch with this machine's best settings, onnxruntime.

    python bench/inference_speed.py [--image-size 320] [--images 32] [--batch-size 8]

One model (params.yaml's model section and classes, random weights: speed does not depend on
them), saved as a checkpoint and exported to ONNX as the evaluate stage exports it. Each
variant runs predict's own code (`predict_files`: decode, resize, network, masks at the
photo's size, PNG files) on the same generated JPEG photos of --image-size px, in a fresh
process of this invocation so that its peak memory is its own; one batch warms up first.

- **torch_fp32**: the PyTorch backend as predict runs it;
- **torch_channels_last**, **torch_bf16**, **torch_bf16_channels_last**: the same with the
  network's weights and input channels-last and/or bf16 autocast (measured also where the
  hardware has no native bf16, which the first line says: there it is emulated);
- **onnxruntime**: the ONNX backend; its process never imports PyTorch.

Each line: images/s, the ratio to torch_fp32, peak resident memory. The best PyTorch variant
is named; the last line is `onnxruntime_vs_torch_fp32: X.XX`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

# Run as a script: the project root, not bench/, must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline  # noqa: E402, F401  (environment set-up before albumentations is imported)

os.environ.setdefault("TQDM_DISABLE", "1")  # predict's progress bars would interleave with the table

TORCH_VARIANTS = {
    "torch_fp32": (False, False),  # (channels_last, bf16)
    "torch_channels_last": (True, False),
    "torch_bf16": (False, True),
    "torch_bf16_channels_last": (True, True),
}
ONNX = "onnxruntime"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_segmenter(variant: str, checkpoint: Path, device: str):
    import torch

    from pipeline.core.device import Precision
    from pipeline.serve.settings import InferenceSettings
    from pipeline.serve.torch_backend import TorchSegmenter

    class Tuned(torch.nn.Module):
        """The network in another memory layout and/or precision; probabilities stay fp32."""

        def __init__(self, network, channels_last, precision):
            super().__init__()
            self.network, self.channels_last, self.precision = network, channels_last, precision

        def forward(self, images):
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self.precision.autocast():
                return self.network(images).float()

    predictor = TorchSegmenter.load(checkpoint, InferenceSettings(0.5, False, ""), device)
    channels_last, bf16 = TORCH_VARIANTS[variant]
    precision = Precision(predictor.device.type, torch.bfloat16 if bf16 else None)
    network = predictor.model.to(memory_format=torch.channels_last) if channels_last else predictor.model
    return replace(predictor, model=Tuned(network, channels_last, precision))


def measure(variant: str, checkpoint: Path, onnx_file: Path, photos: list[Path], batch_size: int, device: str):
    """Images/s of predict_files for one variant, and this process's peak memory (MiB)."""
    from pipeline.serve.predict import predict_files

    if variant == ONNX:
        from pipeline.serve.onnx_backend import OnnxSegmenter

        segmenter = OnnxSegmenter.load(onnx_file, device)
    else:
        segmenter = _torch_segmenter(variant, checkpoint, device)
    with tempfile.TemporaryDirectory() as out:
        predict_files(segmenter, photos[:batch_size], Path(out), batch_size=batch_size)  # warm-up
        started = time.perf_counter()
        written, failures = predict_files(segmenter, photos, Path(out), batch_size=batch_size)
        seconds = time.perf_counter() - started
    assert len(written) == len(photos) and not failures, failures
    return len(photos) / seconds, _peak_mib(), "torch" in sys.modules


def _prepare(workdir: Path, image_size: int, count: int, encoder: str | None) -> tuple[Path, Path, list[Path], str]:
    """Checkpoint, ONNX export and photos, made in a process that is then gone (its memory too)."""
    import onnx
    import torch

    from pipeline.core.classes import ClassSpec
    from pipeline.core.config import load_config
    from pipeline.core.extensions import AUTO
    from pipeline.evaluate.export import onnx_graph
    from pipeline.model.checkpoint import save_checkpoint
    from pipeline.model.losses import resolve_loss
    from pipeline.model.network import build_model
    from pipeline.serve.settings import InferenceSettings

    cfg = load_config()
    model_cfg = cfg.model.model_copy(update={"encoder": encoder or cfg.model.encoder, "encoder_weights": None})
    classes = ClassSpec.of(cfg.data.classes, cfg.data.palette)
    torch.manual_seed(0)
    model = build_model(model_cfg, classes).eval()
    checkpoint = workdir / "model.pt"
    save_checkpoint(
        checkpoint,
        model,
        model_cfg,
        classes,
        loss=resolve_loss(AUTO, classes.binary),
        image_size=image_size,
        resize=cfg.data.resize,
    )
    onnx_file = workdir / "model.onnx"
    onnx.save(onnx_graph(model, classes, InferenceSettings(0.5, False, ""), image_size, cfg.data.resize), onnx_file)
    rng = np.random.default_rng(0)
    photos = []
    for index in range(count):
        # Smooth colour fields, as photos are, rather than noise that JPEG cannot compress.
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        photo = cv2.resize(small, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
        photos.append(workdir / f"{index:03d}.jpg")
        cv2.imwrite(str(photos[-1]), photo)
    bf16 = torch.cuda.is_available() or torch.cpu._is_avx512_bf16_supported()
    machine = (
        f"cuda: {torch.cuda.get_device_name()}"
        if torch.cuda.is_available()
        else f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    native = "yes" if bf16 else "no"
    about = f"{machine}, torch {torch.__version__}, {model_cfg.arch}/{model_cfg.encoder}, native bf16 {native}"
    return checkpoint, onnx_file, photos, about


def _fresh_process(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=320, help="photo side in px, a multiple of 32")
    parser.add_argument("--images", type=int, default=32, help="photos timed per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder", help="another encoder than params.yaml's")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        checkpoint, onnx_file, photos, about = _fresh_process(
            _prepare, Path(tmp), args.image_size, args.images, args.encoder
        )
        print(f"bench: {about}; {args.images} photos of {args.image_size} px, batch {args.batch_size}")
        results = {}
        for variant in [*TORCH_VARIANTS, ONNX]:
            results[variant] = _fresh_process(
                measure, variant, checkpoint, onnx_file, photos, args.batch_size, args.device
            )
    baseline = results["torch_fp32"][0]
    print(f"{'variant':<26} {'images/s':>9} {'vs fp32':>8} {'peak RSS':>10}")
    for variant, (speed, peak, imported_torch) in results.items():
        note = "" if variant != ONNX or not imported_torch else "  (imported torch)"
        print(f"{variant:<26} {speed:>9.2f} {speed / baseline:>8.2f} {peak:>7.0f} MiB{note}")
    best = max((name for name in results if name != ONNX), key=lambda name: results[name][0])
    print(f"best_torch: {best} {results[best][0] / baseline:.2f}")
    print(f"onnxruntime_vs_torch_fp32: {results[ONNX][0] / baseline:.2f}")


if __name__ == "__main__":
    main()
