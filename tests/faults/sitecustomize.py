"""Fault injection for subprocess tests, active only when its environment variable is set.

INJECT_NAN_AFTER_CALLS=N: the training loss returns NaN from its (N+1)-th call on.
"""

import os

if os.environ.get("INJECT_NAN_AFTER_CALLS"):
    import torch

    from pipeline.model import losses

    limit = int(os.environ["INJECT_NAN_AFTER_CALLS"])
    calls = {"count": 0}
    original = losses.DiceBCELoss.forward

    def forward(self, logits, masks):
        calls["count"] += 1
        loss = original(self, logits, masks)
        return loss * torch.tensor(float("nan")) if calls["count"] > limit else loss

    losses.DiceBCELoss.forward = forward
