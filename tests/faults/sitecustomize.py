"""Fault injection for subprocess tests, active only when its environment variable is set.

INJECT_NAN_AFTER_CALLS=N: the training loss returns NaN from its (N+1)-th call on.
INJECT_EXPORT_MISMATCH=1: the exported ONNX graph flips every pixel's class.
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

# The graph reflects the logits about the threshold's, so every pixel's class flips.
if os.environ.get("INJECT_EXPORT_MISMATCH"):
    import math

    import torch

    from pipeline.evaluate import export

    original_graph = export.onnx_graph

    class Reflected(torch.nn.Module):
        def __init__(self, model, pivot):
            super().__init__()
            self.model, self.pivot = model, pivot

        def forward(self, images):
            return 2 * self.pivot - self.model(images)

    def onnx_graph(model, classes, settings, image_size, resize):
        pivot = math.log(settings.threshold / (1 - settings.threshold))
        return original_graph(Reflected(model, pivot), classes, settings, image_size, resize)

    export.onnx_graph = onnx_graph
