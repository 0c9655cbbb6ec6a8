"""Compare candidate EfficientNet-B0 encoders for the default: train-step throughput on this machine.

    python bench/encoders.py [--size 320] [--batch 8] [--steps 4]

Prints images/s per encoder, precision and memory layout, each as a ratio to the first row (the
notebook's `timm-efficientnet-b0`, which smp 0.5+ maps to timm) measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import segmentation_models_pytorch as smp
import torch

import pipeline  # noqa: F401  (environment set-up)
from pipeline.model.losses import DiceBCELoss

CANDIDATES = ("timm-efficientnet-b0", "tu-efficientnet_b0", "efficientnet-b0")


def images_per_second(encoder: str, size: int, batch: int, steps: int, bf16: bool, channels_last: bool) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = smp.create_model("Unet", encoder_name=encoder, encoder_weights=None, classes=1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DiceBCELoss()
    images = torch.randn(batch, 3, size, size).to(memory_format=memory_format)
    masks = (torch.rand(batch, 1, size, size) > 0.5).float()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(images)
        loss_fn(logits.float(), masks).backward()
        optimizer.step()

    step()  # warm-up: allocator, kernels
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.size}px, batch {args.batch}, {args.steps} steps"
    )
    baseline = None
    for bf16, channels_last in ((False, False), (False, True), (True, False), (True, True)):
        for encoder in CANDIDATES:
            rate = images_per_second(encoder, args.size, args.batch, args.steps, bf16, channels_last)
            baseline = baseline or rate
            params = sum(
                p.numel() for p in smp.create_model("Unet", encoder_name=encoder, encoder_weights=None).parameters()
            )
            mode = ("bf16" if bf16 else "fp32") + ("+channels_last" if channels_last else "")
            print(
                f"{encoder:22s} {mode:19s} {params / 1e6:5.2f}M params  {rate:6.2f} img/s  x{rate / baseline:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
