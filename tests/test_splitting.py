"""The split: disjoint, complete, order-independent, stratified, duplicates together."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import DataError
from pipeline.split.splitting import split_pairs

HASH = "ab" * 32


def split(foreground, duplicates=(), seed=0, data_hash=HASH, val=0.2, test=0.1):
    return split_pairs(foreground, duplicates, val_fraction=val, test_fraction=test, seed=seed, data_hash=data_hash)


@st.composite
def datasets(draw):
    ids = draw(st.lists(st.text("abcdefghij0123456789", min_size=1, max_size=6), min_size=12, max_size=80, unique=True))
    foreground = {id_: draw(st.floats(0, 1)) for id_ in ids}
    pool = ids[:]
    duplicates = []
    for _ in range(draw(st.integers(0, 3))):
        size = draw(st.integers(2, 3))
        if len(pool) - size >= 10:
            duplicates.append([pool.pop() for _ in range(size)])
    return foreground, duplicates


@settings(max_examples=60, deadline=None)
@given(datasets(), st.integers(0, 2**32 - 1), st.randoms(use_true_random=False))
def test_split_is_disjoint_complete_stable_under_shuffling_and_keeps_duplicates_together(data, seed, shuffler):
    foreground, duplicates = data
    result = split(foreground, duplicates, seed=seed)
    sets = {name: set(ids) for name, ids in result.items()}
    assert (
        sets["train"].isdisjoint(sets["val"])
        and sets["train"].isdisjoint(sets["test"])
        and sets["val"].isdisjoint(sets["test"])
    )
    assert sets["train"] | sets["val"] | sets["test"] == set(foreground)
    assert sets["train"] and sets["val"] and sets["test"]
    for group in duplicates:
        assert sum(bool(set(group) & ids) for ids in sets.values()) == 1, group
    items = list(foreground.items())
    shuffler.shuffle(items)
    shuffled_duplicates = [shuffler.sample(group, len(group)) for group in reversed(duplicates)]
    assert split(dict(items), shuffled_duplicates, seed=seed) == result


def test_sizes_follow_the_fractions():
    result = split({f"{i}": i / 290 for i in range(290)})
    assert {name: len(ids) for name, ids in result.items()} == {"train": 203, "val": 58, "test": 29}


def test_every_foreground_quintile_reaches_a_small_validation_set():
    # 100 pairs with distinct foreground shares; val gets 10, test 5: each quintile must show up.
    foreground = {f"{i:03d}": i / 100 for i in range(100)}
    for seed in range(5):
        result = split(foreground, seed=seed, val=0.1, test=0.05)
        for name in ("val", "test"):
            quintiles = {int(foreground[id_] * 5) for id_ in result[name]}
            assert quintiles == {0, 1, 2, 3, 4}, (seed, name, result[name])


def test_seed_and_data_hash_each_change_the_split_and_nothing_else_does():
    foreground = {f"{i}": random.Random(i).random() for i in range(60)}
    base = split(foreground)
    assert split(foreground) == base
    assert split(foreground, seed=1)["test"] != base["test"]
    assert split(foreground, data_hash="cd" * 32)["test"] != base["test"]


def test_too_few_pairs_is_an_error_counting_duplicates_once():
    with pytest.raises(DataError, match="only 2 pairs"):
        split({"a": 0.1, "b": 0.2, "c": 0.3}, [["a", "b"]])
