"""Where and in which precision the network runs: shared by training, evaluation and predict."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .errors import TrainingError


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: fp32 (``dtype`` None) or autocast to bf16/fp16."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def needs_grad_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        return self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else nullcontext()

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def choose_precision(amp: bool, device: torch.device) -> Precision:
    """bf16 where the hardware has it, fp16 on older GPUs, fp32 otherwise or when ``amp`` is off.

    On CPUs without native bf16 instructions autocast would emulate it, slower than fp32.
    """
    if not amp:
        return Precision(device.type)
    if device.type == "cuda":
        return Precision("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if device.type == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return Precision("cpu", torch.bfloat16)
    return Precision(device.type)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but PyTorch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(choice)
