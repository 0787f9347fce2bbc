"""Paired bootstrap intervals and recall scoring, on constructed cases with known answers."""

from __future__ import annotations

import random

import pytest

from langchain_deltamem.episodes import generate_episodes, swap_partners
from langchain_deltamem.evaluation.recall import (
    CONDITIONS,
    _swap_partners,
    summarize,
    to_markdown,
)
from langchain_deltamem.paired_bootstrap import paired_difference, paired_ratio
from langchain_deltamem.reading import is_correct, normalize


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    a = [1.0, 0.0, 1.0, 1.0]
    b = [0.0, -1.0, 0.0, 0.0]
    interval = paired_difference(a, b)
    assert interval.estimate == interval.low == interval.high == 1.0


def test_the_interval_covers_a_known_mean_and_shrinks_with_n() -> None:
    rng = random.Random(1)
    widths = []
    for n in (50, 800):
        a = [float(rng.random() < 0.7) for _ in range(n)]
        b = [float(rng.random() < 0.4) for _ in range(n)]
        interval = paired_difference(a, b, seed=3)
        assert interval.low <= interval.estimate <= interval.high
        assert interval.low < 0.3 < interval.high or n == 50
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2.5  # ~ 1/sqrt(n): 4x the width at 16x the items


def test_pairing_removes_shared_item_difficulty() -> None:
    """Items differ hugely in difficulty, the systems by a constant: only pairing sees it."""
    rng = random.Random(0)
    difficulty = [rng.uniform(0, 10) for _ in range(200)]
    a = [d + 0.1 for d in difficulty]
    interval = paired_difference(a, difficulty)
    assert interval.low > 0.09 and interval.high < 0.11


def test_ratio_interval() -> None:
    interval = paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert interval.estimate == pytest.approx(2.0)
    assert interval.low == pytest.approx(2.0) and interval.high == pytest.approx(2.0)


def test_bad_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no items"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0], [0.0], confidence=1.5)


@pytest.mark.parametrize(
    ("reply", "gold", "expected"),
    [
        ("Your cat is called Zorvelle.", "Zorvelle", True),
        ("zorvelle!", "Zorvelle", True),
        ("The code is 4471", "4471", True),
        ("The code is 447", "4471", False),
        ("No information available.", "No information available.", True),
        ("I don't know", "No information available.", False),
        ("Kadrimo Street", "the Kadrimo street", True),  # articles and case ignored
        ("", "Zorvelle", False),
        ("anything", "", False),  # an empty gold answer never counts
    ],
)
def test_is_correct(reply: str, gold: str, expected: bool) -> None:
    assert is_correct(reply, gold) is expected


def test_normalize() -> None:
    assert normalize("  The Café, at 9:30! ") == "café at 930"


def test_swap_partners_stay_within_the_same_number_of_facts() -> None:
    episodes = generate_episodes(6, split="heldout", seed=5, num_facts=[1, 2])
    partner = _swap_partners(episodes)
    for episode in episodes:
        other = partner[episode.id]
        assert other.num_facts == episode.num_facts
        assert other.id != episode.id


def test_swap_partners_prefer_the_same_value_type() -> None:
    episodes = generate_episodes(
        12, split="heldout", seed=5, num_facts=[1], kinds=["facts"], value_types=["colour", "food"]
    )
    partners = swap_partners(episodes)
    for i, episode in enumerate(episodes):
        other = episodes[partners[i]]
        assert partners[i] != i and other.meta["value_type"] == episode.meta["value_type"]
    lone = generate_episodes(1, split="heldout", seed=5, num_facts=[1], kinds=["facts"])
    assert swap_partners(lone) == [0]  # nothing else to swap with: the episode itself


def test_summary_and_table_on_constructed_records() -> None:
    records = []
    for i in range(40):
        correct = {c: False for c in CONDITIONS}
        correct["right"] = i % 2 == 0  # 0.5
        correct["full_history"] = True
        correct["swapped"] = i % 10 == 0  # 0.1
        records.append({"num_facts": 1 if i < 20 else 2, "correct": correct})
    rows = summarize(records)
    assert [r["facts"] for r in rows] == ["1", "2", "all"]
    overall = rows[-1]
    assert overall["n"] == 40
    assert overall["accuracy"]["right"] == 0.5
    assert overall["right_minus_swapped"]["estimate"] == pytest.approx(0.4)
    assert overall["right_minus_swapped"]["low"] > 0
    table = to_markdown(rows)
    assert table.count("\n") == 5 and "| all | 40 | 0.500 | 0.100 |" in table
