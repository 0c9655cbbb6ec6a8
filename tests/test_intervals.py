"""The bootstrap interval every reported score and the champion decision use."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import intervals
from pipeline.core.intervals import bootstrap_mean


def test_interval_matches_a_direct_bootstrap_and_is_reproducible():
    values = np.random.default_rng(3).uniform(0.4, 1.0, size=29)
    found = bootstrap_mean(values)
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, 29, size=(10_000, 29))].mean(axis=1)
    assert found.mean == pytest.approx(values.mean())
    assert (found.low, found.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert bootstrap_mean(values) == found


def test_drawing_in_blocks_gives_the_same_interval(monkeypatch):
    values = np.random.default_rng(4).uniform(size=50)
    whole = bootstrap_mean(values)
    monkeypatch.setattr(intervals, "BLOCK_INDICES", 50 * 7)  # blocks of 7 resamples, the last one short
    assert bootstrap_mean(values) == whole


def test_interval_narrows_with_more_images_and_holds_constant_values():
    rng = np.random.default_rng(1)
    small = bootstrap_mean(rng.normal(0.8, 0.12, size=29))
    large = bootstrap_mean(rng.normal(0.8, 0.12, size=290))
    assert large.half_width() < small.half_width() / 2
    # Standard error 0.12 / sqrt(29) = 0.022: a 95 % interval about 2 x 1.96 of it wide.
    assert small.half_width() == pytest.approx(1.96 * 0.12 / np.sqrt(29), rel=0.25)
    constant = bootstrap_mean([0.5] * 10)
    assert (constant.low, constant.mean, constant.high) == (0.5, 0.5, 0.5)


def test_a_paired_difference_is_an_improvement_only_when_its_interval_is_above_zero():
    rng = np.random.default_rng(2)
    champion = rng.uniform(0.6, 0.9, size=58)
    noise = rng.normal(0, 0.03, size=58)
    assert not bootstrap_mean(champion + noise - champion).excludes_zero_from_above()
    assert bootstrap_mean(champion + 0.03 + noise - champion).excludes_zero_from_above()
    assert bootstrap_mean([0.004, -0.01, 0.018]).describe_signed().startswith("+0.004 [")


@pytest.mark.parametrize("values", [[], [0.5, float("nan")]])
def test_interval_refuses_what_it_cannot_measure(values):
    with pytest.raises(ValueError, match="bootstrap interval"):
        bootstrap_mean(values)
