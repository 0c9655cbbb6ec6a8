"""Divide pairs into train/val/test: seeded, stratified by foreground share, duplicates kept together.

The unit of assignment is a group of exact-duplicate images (usually a single pair), so
a photo never sits in train and test at once. Units are ranked by foreground share and
cut into equal-count bins; each bin gives test and val their proportional share, so a
validation set of a dozen images still spans small and large subjects. Everything is
sorted before the seeded shuffle, and the seed mixes ``split.seed`` with the data's
content hash: the result depends on the data and the seed, never on listing order.

The split stage refuses a split with fewer than ``MIN_PAIRS_PER_SPLIT`` pairs in train, val or
test (``check_split_sizes``): one validation image picks the epoch and tunes the threshold on
itself, and one test image scores 0 or 1 and crowns a champion on that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..core.errors import DataError

# More bins than this make a bin's share of a small test set round to nothing.
MAX_BINS = 5


# The fewest pairs (exact duplicates counted once) train, val and test may each hold.
MIN_PAIRS_PER_SPLIT = 2
# Below this many pairs in val or test the split stage warns that its scores are rough.
FEW_HELD_OUT = 10
_LARGEST_SUGGESTED_COUNT = 100_000
_SETTLED = 100


def split_sizes(count: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many units ``split_pairs`` puts in each split (at least one held out in val and test)."""
    n_test = max(1, round(count * test_fraction))
    n_val = max(1, round(count * val_fraction))
    return {"train": count - n_val - n_test, "val": n_val, "test": n_test}


def _big_enough(count: int, val_fraction: float, test_fraction: float) -> bool:
    return min(split_sizes(count, val_fraction, test_fraction).values()) >= MIN_PAIRS_PER_SPLIT


def check_split_sizes(count: int, val_fraction: float, test_fraction: float) -> None:
    """Refuse, in one line saying what to change, a split with a part too small to train or measure on."""
    if _big_enough(count, val_fraction, test_fraction):
        return
    sizes = split_sizes(count, val_fraction, test_fraction)
    # The fewest pairs from which on every count is big enough (rounding can make one more pair a pair too few).
    needed = next(
        (
            n
            for n in range(count + 1, _LARGEST_SUGGESTED_COUNT)
            if all(_big_enough(m, val_fraction, test_fraction) for m in range(n, n + _SETTLED))
        ),
        None,
    )
    fixes = [f"add pairs (at least {needed} at these fractions)" if needed else "add pairs"]
    for key, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if sizes[key.removesuffix("_fraction")] < MIN_PAIRS_PER_SPLIT:
            # The smallest share, in hundredths, that gives this split enough pairs and leaves train enough.
            for hundredths in range(int(fraction * 100) + 1, 90):
                shares = {"val_fraction": val_fraction, "test_fraction": test_fraction, key: hundredths / 100}
                if shares["val_fraction"] + shares["test_fraction"] < 0.9 and _big_enough(count, **shares):
                    fixes.append(f"raise split.{key} to {hundredths / 100:g}")
                    break
    divided = (
        f"split into {', '.join(f'{name} {size}' for name, size in sizes.items())}"
        if sizes["train"] >= 0
        else "cannot fill train, val and test"
    )
    raise DataError(
        f"{count} pair{'' if count == 1 else 's'} (counting exact duplicates once) {divided} "
        f"(split.val_fraction {val_fraction:g}, split.test_fraction {test_fraction:g}): train, val and test each "
        f"need at least {MIN_PAIRS_PER_SPLIT} pairs, or the model is chosen, and scored, on a single image. "
        f"{'; or '.join(fixes).capitalize()}. Nothing was written."
    )


def unit_count(foreground: Mapping[str, float], duplicates: Sequence[Sequence[str]]) -> int:
    """How many units (groups of exact duplicates, or single pairs) ``split_pairs`` assigns."""
    return len(_units(foreground, duplicates))


def _apportion(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` across bins in proportion to ``sizes`` (largest remainder, integers only)."""
    whole = sum(sizes)
    shares = [total * size // whole for size in sizes]
    remainders = [total * size % whole for size in sizes]
    for index in sorted(range(len(sizes)), key=lambda i: (-remainders[i], i))[: total - sum(shares)]:
        shares[index] += 1
    return shares


def _units(foreground: Mapping[str, float], duplicates: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    grouped = {id_ for group in duplicates for id_ in group}
    units = [tuple(sorted(group)) for group in duplicates]
    units += [(id_,) for id_ in foreground if id_ not in grouped]
    return sorted(units)


def split_pairs(
    foreground: Mapping[str, float],
    duplicates: Sequence[Sequence[str]],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    data_hash: str,
) -> dict[str, list[str]]:
    """``{"train": ids, "val": ids, "test": ids}``, disjoint and covering every id in ``foreground``."""
    units = _units(foreground, duplicates)
    count = len(units)
    sizes = split_sizes(count, val_fraction, test_fraction)
    n_val, n_test = sizes["val"], sizes["test"]
    if sizes["train"] < 1:
        raise DataError(
            f"only {count} pairs (counting exact duplicates once): "
            "too few for a train/val/test split with these fractions"
        )
    share = {unit: sum(foreground[id_] for id_ in unit) / len(unit) for unit in units}
    ranked = sorted(units, key=lambda unit: (share[unit], unit))
    n_bins = max(1, min(MAX_BINS, n_test, n_val))
    bins = [ranked[index * count // n_bins : (index + 1) * count // n_bins] for index in range(n_bins)]
    sizes = [len(members) for members in bins]
    test_quota = _apportion(n_test, sizes)
    val_quota = _apportion(n_val, [size - taken for size, taken in zip(sizes, test_quota, strict=True)])
    rng = np.random.default_rng([seed, int(data_hash[:16], 16)])
    assignment: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for members, n_test_here, n_val_here in zip(bins, test_quota, val_quota, strict=True):
        shuffled = [members[index] for index in rng.permutation(len(members))]
        for position, unit in enumerate(shuffled):
            name = "test" if position < n_test_here else "val" if position < n_test_here + n_val_here else "train"
            assignment[name].extend(unit)
    return {name: sorted(ids) for name, ids in assignment.items()}
