"""`deltamem eval recall` end to end on the embedded model (fresh adapter, two episodes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import generate_episodes, swap_partners
from langchain_deltamem.evaluation.recall import CONDITIONS, RecallEvaluator, content_nll, main
from langchain_deltamem.reading import answer_nll, question_ids

pytestmark = pytest.mark.slow


def test_an_empty_state_leaves_the_logits_of_the_bare_backbone() -> None:
    engine = get_engine(adapter="fresh-msw")  # base_slice heads: non-zero corrections exist
    ids = question_ids(engine.tokenizer, "What is my cat called?")
    with torch.inference_mode():
        bare = engine.model(ids).logits
        with engine.handle.memory(engine.handle.new_state()):
            empty = engine.model(ids).logits
        episodes = generate_episodes(1, split="heldout", seed=3, num_facts=[1], kinds=["facts"])
        written = RecallEvaluator(engine).write(episodes[0])
        with engine.handle.memory(written):
            steered = engine.model(ids).logits
    assert torch.equal(bare, empty)
    assert not torch.equal(bare, steered)  # and a written state does change them


def test_recall_records_every_condition_and_resumes_from_its_cache(tmp_path: Path) -> None:
    engine = get_engine()
    episodes = generate_episodes(
        2, split="heldout", seed=7, num_facts=[1], kinds=["facts"], distractors=(0, 0)
    )
    cache = tmp_path / "records.jsonl"
    evaluator = RecallEvaluator(engine, max_new_tokens=6)
    records = evaluator.run(episodes, cache=cache, progress=False)
    assert [r["id"] for r in records] == [e.id for e in episodes]
    for record in records:
        assert set(record["replies"]) == set(CONDITIONS)
        assert record["replies"]["zero"] == record["replies"]["question_only"]
    again = evaluator.run(episodes, cache=cache, progress=False)  # served from the cache
    assert again == records
    assert len(cache.read_text().splitlines()) == 2


def test_the_command_writes_its_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--facts", "1", "--n", "2", "--max-new-tokens", "4", "--out", str(tmp_path)])
    assert "| 1 | 2 |" in capsys.readouterr().out
    assert (tmp_path / "summary.json").exists() and (tmp_path / "summary.md").exists()


def test_the_content_nll_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--facts", "1", "--n", "3", "--nll", "--distractors", "0", "0", "--out", str(tmp_path)])
    assert "swapped − right" in capsys.readouterr().out
    import json

    result = json.loads((tmp_path / "content_nll.json").read_text())
    assert result["n"] == 3 and result["nll_right"] > 0 and result["nll_swapped"] > 0


@pytest.mark.parametrize("adapter", ["fresh-ssw", "fresh-tsw"])
def test_the_batched_content_nll_equals_writing_each_history_alone(adapter: str) -> None:
    """Multi-fact episodes with distractor turns (histories of different lengths and write
    calls) in one batch give each episode the NLLs of the one-at-a-time chat-model path."""
    engine = get_engine(adapter=adapter)
    episodes = generate_episodes(
        2, split="heldout", seed=5, num_facts=[1], kinds=["facts"], distractors=(0, 0)
    ) + generate_episodes(
        2, split="heldout", seed=6, num_facts=[2], kinds=["facts"], distractors=(1, 3)
    )
    result = content_nll(engine, episodes, batch_size=3)  # two chunks, the second of one row
    partners = swap_partners(episodes)
    evaluator = RecallEvaluator(engine)
    states = [evaluator.write(e) for e in episodes]
    with torch.inference_mode():
        right = [
            float(answer_nll(engine.handle, engine.tokenizer, s, e.question, e.answer)[0])
            for s, e in zip(states, episodes, strict=True)
        ]
        swapped = [
            float(answer_nll(engine.handle, engine.tokenizer, states[j], e.question, e.answer)[0])
            for e, j in zip(episodes, partners, strict=True)
        ]
    assert result["n"] == 4
    assert result["nll_right"] == pytest.approx(sum(right) / 4, abs=1e-4)
    assert result["nll_swapped"] == pytest.approx(sum(swapped) / 4, abs=1e-4)
    # an empty state reads as the bare backbone exactly, so any difference is the memory read
    assert abs(result["nll_right"] - result["nll_zero"]) > 1e-5
