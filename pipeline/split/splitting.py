"""Divide pairs into train/val/test: seeded, stratified by foreground share, duplicates kept together.

The unit of assignment is a group of exact-duplicate images (usually a single pair), so
a photo never sits in train and test at once. Units are ranked by foreground share and
cut into equal-count bins; each bin gives test and val their proportional share, so a
validation set of a dozen images still spans small and large subjects. Everything is
sorted before the seeded shuffle, and the seed mixes ``split.seed`` with the data's
content hash: the result depends on the data and the seed, never on listing order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..core.errors import DataError

# More bins than this make a bin's share of a small test set round to nothing.
MAX_BINS = 5


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
    n_test = max(1, round(count * test_fraction))
    n_val = max(1, round(count * val_fraction))
    if count - n_test - n_val < 1:
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
