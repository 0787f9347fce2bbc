"""The long-session run: per-turn records, a resume that continues bit-exactly, the summary."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from langchain_deltamem.bench import long_session


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "turns.jsonl").read_text().splitlines()]


def _memory(path: Path) -> bytes:
    return base64.b64decode(json.loads((path / "checkpoint.json").read_text())["memory"])


@pytest.mark.slow
def test_a_resumed_session_continues_exactly_as_an_unbroken_one(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    long_session.run(straight, turns=4, checkpoint_every=4)
    long_session.run(resumed, turns=3, checkpoint_every=2)
    long_session.run(resumed, turns=4, checkpoint_every=2)
    a, b = _records(straight), _records(resumed)
    assert [r["turn"] for r in b] == [1, 2, 3, 4]
    assert [r["reply"] for r in a] == [r["reply"] for r in b]
    assert [r["prompt_tokens"] for r in a] == [r["prompt_tokens"] for r in b]
    assert _memory(straight) == _memory(resumed)
    assert all(r["finite"] and r["norm_max"] > 0 and r["rss_mb"] > 0 for r in a)
    with pytest.raises(ValueError, match="seed 0, not 1"):
        long_session.run(resumed, turns=6, seed=1)
    # turns re-run from the states saved after turns 2 and 3 reproduce their replies
    rerun = long_session.remeasure(resumed, b, window=3, repeats=1)
    assert rerun["early_turns"] == [3] and rerun["late_turns"] == [3, 4]
    assert rerun["replies_reproduced"] == 1.0
    assert rerun["early_s"] > 0 and rerun["late_s"] > 0


def test_summary_compares_first_and_last_turns(tmp_path: Path) -> None:
    records = [
        {
            "turn": k,
            "seconds": 1.0 if k <= 100 else 1.5,
            "prompt_tokens": 150,
            "rss_mb": 1000.0 + k,
            "norm_max": 2.0,
            "abs_max": 0.5,
            "finite": k != 150,
            "reply": "",
        }
        for k in range(1, 301)
    ]
    s = long_session.summarize(records)
    assert s["time_ratio"] == pytest.approx(1.5)
    assert s["rss_first_mb"] == pytest.approx(1050.5)
    assert s["rss_last_mb"] == pytest.approx(1250.5)
    assert s["non_finite_turns"] == 1
    text = long_session.report(records, tmp_path / "long.md")
    assert "1.500 (goal ≤ 1.2: NOT met)" in text
    assert (tmp_path / "long.png").stat().st_size > 0
