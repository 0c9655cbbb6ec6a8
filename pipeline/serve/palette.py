"""Every colour a picture of this pipeline paints with: predict's overlays, the gallery's.

Only evaluate and predict draw, so editing a colour here reruns the evaluate stage alone.
"""

from __future__ import annotations

from ..core.classes import ClassSpec, Colour

# Okabe-Ito colours, told apart also by colour-blind readers; for overlays of index masks.
DISTINCT_COLOURS: tuple[Colour, ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)
# What predict has always painted a person with; binary overlays without a palette keep it.
BINARY_OVERLAY: Colour = (255, 64, 64)

# The gallery's error panel, in colours that none of the classes above is drawn in (its legend
# lists both), and told apart by lightness too: white, magenta and cyan.
TRUE_POSITIVE: Colour = (255, 255, 255)  # white: predicted and in the truth
FALSE_POSITIVE: Colour = (255, 0, 255)  # magenta: predicted, not in the truth
FALSE_NEGATIVE: Colour = (0, 255, 255)  # cyan: in the truth, missed
TRUTH: Colour = (240, 228, 66)  # yellow: the binary truth panel


def overlay_colours(classes: ClassSpec) -> tuple[Colour, ...]:
    """A colour per foreground class: the palette's, else fixed distinct ones."""
    if classes.palette is not None:
        return classes.palette[1:]
    if classes.binary:
        return (BINARY_OVERLAY,)
    return tuple(DISTINCT_COLOURS[index % len(DISTINCT_COLOURS)] for index in range(classes.count - 1))
