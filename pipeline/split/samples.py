"""Read one image/mask pair and make the two agree, or say exactly why they cannot.

Photos are decoded as ``predict`` decodes them (``data.decode_image``: 8-bit RGB, EXIF
orientation applied), so a model sees the same pixels in training and in use. What
that decoding changes (grey to RGB, alpha dropped, 16 bits to 8, rotation) is recorded
as a repair. Masks are read with their true depth and values and without rotation, and
turned into class ids as ``data.classes`` and ``data.palette`` say they encode them.

An EXIF orientation is applied where the mask's shape shows it was drawn on the upright
photo, and ignored where it shows the stored one. Where the mask fits both (a square photo,
or a flip or half turn, orientations 2-4, which keep the shape), the photo is kept as
stored, like its mask, and the repair says so: a guess would put the mask on a turned photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.classes import ClassSpec, Colour
from ..core.errors import DataError
from ..core.images import decode_image, open_image
from .layouts import Pair
from .report import EXIF_AMBIGUOUS, BadSample, Repair

EXIF_ORIENTATION = 0x0112
# Anti-aliased edges and JPEG noise put a few pixels between 0 and full scale. When more
# than this share of a mask's pixels sits in the middle band, it is no binary mask (a
# soft map, or a photo in the masks folder) and thresholding would invent a label.
MAX_GREY_MASK_FRACTION = 0.1
GREY_BAND = (1 / 8, 7 / 8)


@dataclass
class Sample:
    image: np.ndarray  # H x W x 3 uint8 RGB
    mask: np.ndarray  # H x W uint8 class ids (0/1 for binary)
    repairs: list[Repair]


class _Rejected(Exception):
    def __init__(self, reason: str, path, detail: str):
        super().__init__(detail)
        self.record = BadSample(reason, (path,), detail)


@dataclass
class _Decoded:
    raw: np.ndarray  # the pixels as stored: true depth and channels, no rotation
    orientation: int  # EXIF orientation, 1 when the file has none
    pillow_reads: bool  # whether Pillow knows the format (decode_image, as predict uses it, needs it)


def _decode(data: bytes, path) -> _Decoded:
    """The file opened by Pillow once and decoded by OpenCV once, or a rejection naming why not."""
    if not data:
        raise _Rejected("empty_file", path, "empty file (0 bytes)")
    try:
        opened = open_image(data, path)
    except DataError as exc:
        raise _Rejected("too_large", path, str(exc).removeprefix(f"{path}: ")) from None
    except UnidentifiedImageError:
        opened = None  # not a format Pillow knows: OpenCV decides below
    except (OSError, SyntaxError, ValueError) as exc:
        raise _Rejected("truncated", path, f"truncated or corrupt image ({exc})") from None
    orientation = 1
    if opened is not None:
        with opened:
            try:
                # Some OpenCV versions decode a truncated JPEG without complaint, filling the rest
                # with grey; Pillow's full decode always notices.
                opened.load()
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise _Rejected("truncated", path, f"truncated or corrupt image ({exc})") from None
            orientation = _exif_orientation(opened)
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise _Rejected("unreadable", path, "not a readable image (unknown format or corrupt)")
    if raw.dtype not in (np.uint8, np.uint16):
        raise _Rejected("unsupported_pixels", path, f"{raw.dtype} pixels; only 8- and 16-bit images are supported")
    return _Decoded(raw, orientation, opened is not None)


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, ValueError, TypeError):
        return 1


def _conversions(raw: np.ndarray) -> list[Repair]:
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    repairs = []
    if channels in (1, 2):
        repairs.append(Repair("grayscale_to_rgb", "grayscale image converted to RGB"))
    if channels in (2, 4):
        repairs.append(Repair("alpha_dropped", "alpha channel dropped"))
    if raw.dtype == np.uint16:
        repairs.append(Repair("16bit_to_8bit", "16-bit image scaled to 8 bits"))
    return repairs


def _same_picture(shape: tuple[int, int], other: tuple[int, int]) -> bool:
    """Same aspect ratio, up to the one pixel that rounding a rescaled side can cost."""
    (height, width), (other_height, other_width) = shape, other
    return (
        abs(other_height - height * other_width / width) <= 1 or abs(other_width - width * other_height / height) <= 1
    )


def _upright(data: bytes, path, decoded: _Decoded) -> np.ndarray:
    """The photo as ``decode_image`` gives it to predict: 8-bit RGB, EXIF orientation applied."""
    if decoded.orientation == 1 and decoded.pillow_reads:
        return _as_stored(data, decoded)
    try:
        return decode_image(data, path)
    except DataError as exc:
        raise _Rejected("unreadable", path, str(exc).removeprefix(f"{path}: ")) from None


def read_image(data: bytes, path, mask_shape: tuple[int, int]) -> tuple[np.ndarray, list[Repair]]:
    decoded = _decode(data, path)
    raw, orientation = decoded.raw, decoded.orientation
    repairs = _conversions(raw)
    upright = _upright(data, path, decoded)
    if orientation == 1:
        return upright, repairs
    stored = raw.shape[:2]
    fits_stored, fits_upright = _same_picture(stored, mask_shape), _same_picture(upright.shape[:2], mask_shape)
    if fits_stored and fits_upright:
        # Square, or a flip or half turn (the shape stays): the mask's shape cannot tell which photo it was
        # drawn on. Keep the pixels as stored, as the mask is read, and say so.
        return _as_stored(data, decoded), repairs + [
            Repair(
                EXIF_AMBIGUOUS,
                f"EXIF orientation {orientation} not applied: the mask fits the {stored[1]}x{stored[0]} photo "
                "stored or upright, so its shape cannot tell which one it was drawn on; kept as stored, like the "
                "mask (if the mask follows the upright photo, save the photo upright without the EXIF tag)",
            )
        ]
    if fits_stored:
        # The mask was drawn on the pixels as stored, not as viewers show them.
        return _as_stored(data, decoded), repairs + [
            Repair("exif_ignored", f"EXIF orientation {orientation} ignored: the mask matches the stored pixels")
        ]
    return upright, repairs + [
        Repair(
            "exif_rotated", f"image turned upright per EXIF orientation {orientation}, as viewers and predict show it"
        )
    ]


def _as_stored(data: bytes, decoded: _Decoded) -> np.ndarray:
    """The photo as 8-bit RGB, its EXIF orientation not applied."""
    raw = decoded.raw
    if raw.dtype == np.uint8 and raw.ndim == 3 and raw.shape[2] == 3:
        # OpenCV gives 8-bit colour pixels the same whether asked to convert them or not: no second decode.
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _single_channel(raw: np.ndarray, path) -> np.ndarray:
    if raw.ndim == 2:
        return raw
    colour = raw[..., :3] if raw.shape[2] >= 3 else raw[..., :1]
    if not (colour == colour[..., :1]).all():
        raise _Rejected(
            "mask_colour",
            path,
            "mask has colours (its channels differ); expected a single-channel mask (colour masks need data.palette)",
        )
    return colour[..., 0]


def _binary_mask(mask: np.ndarray, path) -> tuple[np.ndarray, list[Repair]]:
    """A 0/1 mask. 0/255, 0/1 and 0/65535 pass as they are; near-binary masks are thresholded (recorded)."""
    full = int(np.iinfo(mask.dtype).max)
    values = np.unique(mask)
    if values.max(initial=0) <= 1 or set(values.tolist()) <= {0, full}:
        return (mask > 0).astype(np.uint8), []
    shown = _listed(values.tolist())
    if values.max() < full / 2:
        raise _Rejected("mask_values", path, f"mask values {shown} are neither 0/{full} nor 0/1 (class labels?)")
    grey = float(np.mean((mask > full * GREY_BAND[0]) & (mask < full * GREY_BAND[1])))
    if grey > MAX_GREY_MASK_FRACTION:
        raise _Rejected(
            "mask_values", path, f"{grey:.0%} of the mask's pixels are grey (values {shown}): not a binary mask"
        )
    half = (full + 1) // 2
    return (mask >= half).astype(np.uint8), [
        Repair("mask_thresholded", f"mask had {len(values)} grey levels (anti-aliased edges): thresholded at {half}")
    ]


def _index_mask(mask: np.ndarray, path, classes: ClassSpec) -> np.ndarray:
    """Class ids as stored; no repair is safe here, since any value could be a real class."""
    unknown = np.unique(mask[mask >= classes.count])
    if unknown.size:
        raise _Rejected(
            "mask_values",
            path,
            f"mask values {_listed(unknown.tolist())} are not class ids: "
            f"data.classes lists {classes.count} classes (ids 0-{classes.count - 1})",
        )
    return mask.astype(np.uint8)


def _palette_mask(raw: np.ndarray, path, palette: tuple[Colour, ...]) -> np.ndarray:
    """Class ids from exact colour matches; a colour outside the palette (anti-aliasing, a stray label) is refused."""
    if raw.dtype != np.uint8:
        raise _Rejected(
            "mask_values", path, f"{raw.dtype} colour mask; palette masks must be 8-bit RGB like data.palette"
        )
    if raw.ndim == 2:
        rgb = cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    elif raw.shape[2] in (3, 4):
        rgb = raw[..., 2::-1]  # OpenCV's BGR(A) to RGB, alpha dropped
    else:
        raise _Rejected("mask_colour", path, f"mask has {raw.shape[2]} channels; palette masks are RGB")
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], np.int32)
    found = np.unique(codes)
    unknown = found[~np.isin(found, palette_codes)]
    if unknown.size:
        colours = [f"[{code >> 16}, {(code >> 8) & 255}, {code & 255}]" for code in unknown.tolist()]
        raise _Rejected("mask_colour", path, f"mask colours {_listed(colours)} are not in data.palette")
    order = np.argsort(palette_codes)
    return order[np.searchsorted(palette_codes[order], codes)].astype(np.uint8)


def _listed(values: list) -> str:
    return ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")


def read_mask(data: bytes, path, classes: ClassSpec) -> tuple[np.ndarray, list[Repair]]:
    """Class ids per pixel (0/1 for two classes), as ``classes`` says masks encode them."""
    raw = _decode(data, path).raw
    if classes.palette is not None:
        return _palette_mask(raw, path, classes.palette), []
    repairs = (
        [Repair("mask_channels", "mask stored with several identical channels; one kept")] if raw.ndim == 3 else []
    )
    mask = _single_channel(raw, path)
    if not classes.binary:
        return _index_mask(mask, path, classes), repairs
    mask, thresholded = _binary_mask(mask, path)
    return mask, repairs + thresholded


def fit_mask(mask: np.ndarray, image_shape: tuple[int, ...], path) -> tuple[np.ndarray, list[Repair]]:
    """Bring ``mask`` to the image's size when it is the same picture at another scale."""
    height, width = image_shape[:2]
    if mask.shape == (height, width):
        return mask, []
    if not _same_picture((height, width), mask.shape):
        raise _Rejected(
            "size_mismatch",
            path,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; "
            "the aspect ratios differ, so the mask cannot be rescaled to fit",
        )
    # Nearest neighbour keeps every pixel a valid class id.
    resized = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return resized, [
        Repair(
            "mask_resized", f"mask resized from {mask.shape[1]}x{mask.shape[0]} to {width}x{height} (nearest neighbour)"
        )
    ]


def read_fitted_mask(path: Path, classes: ClassSpec, image_shape: tuple[int, int]) -> np.ndarray | BadSample:
    """The mask file as ``read_pair`` returns it, given the shape its photo had there (after EXIF
    orientation): the photo need not be decoded again."""
    try:
        mask, _ = read_mask(path.read_bytes(), path, classes)
        return fit_mask(mask, image_shape, path)[0]
    except _Rejected as rejected:
        return rejected.record


def read_pair(pair: Pair, image_bytes: bytes, mask_bytes: bytes, classes: ClassSpec) -> Sample | BadSample:
    """The pair's image and mask, agreeing in size and orientation, or the record of why not."""
    try:
        mask, mask_repairs = read_mask(mask_bytes, pair.mask, classes)
        image, image_repairs = read_image(image_bytes, pair.image, mask.shape)
        mask, fit_repairs = fit_mask(mask, image.shape, pair.mask)
    except _Rejected as rejected:
        return rejected.record
    return Sample(image, mask, image_repairs + mask_repairs + fit_repairs)
