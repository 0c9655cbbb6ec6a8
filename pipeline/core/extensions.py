"""The names ``params.yaml`` picks implementations by: data layouts (``data.layout``) and
training losses (``train.loss``).

``config.py`` validates both before any stage runs, and core imports nothing else of the
package (tests/test_layering.py), so the names, and what each one accepts, live here. The
implementations are registered under the same names where they are used:
``split/layouts.py`` (``LAYOUTS``) and ``model/losses.py`` (``LOSSES``);
tests/test_extensions.py checks that both sides list the same names. docs/extending.md shows
how to add one.
"""

from __future__ import annotations

import re
from typing import Literal

AUTO = "auto"

# Each layout's arguments, written `name:<first>,<second>` in data.layout (paths relative to the
# dataset's top folder). `auto` tries the layouts in this order.
LAYOUT_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "csv": ("file",),
    "folders": ("images folder", "masks folder"),
}

# Which models each loss can train: "binary" (two classes, one logit channel), "multiclass"
# (a logit channel per class) or "any".
Fit = Literal["binary", "multiclass", "any"]
LOSS_FITS: dict[str, Fit] = {
    "dice_bce": "binary",
    "dice_ce": "multiclass",
    "focal_dice": "any",
    "lovasz": "any",
}


def layout_pattern() -> str:
    """What data.layout accepts: auto, a layout's name, or its name with all its arguments."""
    forms = [
        re.escape(name) + "(:" + ",".join(["[^,]+"] * len(arguments)) + ")?"
        for name, arguments in LAYOUT_ARGUMENTS.items()
    ]
    return "^(" + "|".join([AUTO, *forms]) + ")$"


def layout_usage(name: str) -> str:
    """The data.layout value that names a reading explicitly, e.g. ``folders:<images folder>,<masks folder>``."""
    return f"{name}:" + ",".join(f"<{argument}>" for argument in LAYOUT_ARGUMENTS[name])


def resolve_loss(name: str, binary: bool) -> str:
    """The loss ``train.loss`` means: ``auto`` is dice_bce for two classes, dice_ce for more."""
    if name != AUTO:
        return name
    return "dice_bce" if binary else "dice_ce"


def loss_misfit(name: str, class_count: int) -> str | None:
    """Why loss ``name`` cannot train a model of ``class_count`` classes; None when it can."""
    needed = "binary" if class_count == 2 else "multiclass"
    fit = LOSS_FITS[resolve_loss(name, class_count == 2)]
    if fit in ("any", needed):
        return None
    fitting = [AUTO, *(other for other, other_fit in LOSS_FITS.items() if other_fit in ("any", needed))]
    kind = "binary models (two classes)" if fit == "binary" else "models of more than two classes"
    return f"{name!r} is for {kind}, but data.classes has {class_count}; use one of: {', '.join(fitting)}"
