"""Paired bootstrap confidence intervals: every comparison in the results is paired, because
the systems answer the very same questions and per-question difficulty dwarfs system effects."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided bootstrap interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of ``a - b`` over paired items, with a percentile bootstrap interval
    (items resampled with replacement, the pairs kept together)."""
    _check_pairs(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return _percentile_interval(diffs, lambda xs: sum(xs) / len(xs), resamples, confidence, seed)


def paired_ratio(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``mean(a) / mean(b)`` over paired items, with a percentile bootstrap interval."""
    _check_pairs(a, b)
    pairs = list(zip(a, b, strict=True))

    def ratio(sample: Sequence[tuple[float, float]]) -> float:
        denominator = sum(y for _, y in sample)
        return sum(x for x, _ in sample) / denominator if denominator else float("nan")

    return _percentile_interval(pairs, ratio, resamples, confidence, seed)


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("no items to compare")


def _percentile_interval(items, statistic, resamples: int, confidence: float, seed: int):
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = random.Random(seed)
    n = len(items)
    stats = sorted(statistic([items[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = stats[int(tail * (resamples - 1))]
    high = stats[round((1 - tail) * (resamples - 1))]
    return Interval(statistic(items), low, high)
