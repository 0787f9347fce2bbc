"""`deltamem eval perplexity`: plain-text perplexity with an unrelated memory (embedded model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import LOCOMO_DATA

from langchain_deltamem.cli import main as cli_main
from langchain_deltamem.engine import get_engine
from langchain_deltamem.evaluation.perplexity import (
    held_out_chats,
    locomo_chats,
    perplexity_check,
    token_nll,
)

pytestmark = pytest.mark.slow
LOCOMO = LOCOMO_DATA


def test_bare_perplexity_matches_a_hand_computed_loss() -> None:
    engine = get_engine(adapter="fresh-msw")
    chat = held_out_chats(1)[0]
    nll, _ = token_nll(engine, chat)
    text = engine.tokenizer.apply_chat_template(chat, tokenize=False)
    ids = engine.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = engine.model(ids, labels=ids).loss  # transformers' own shifted cross-entropy
    assert nll.numel() == ids.shape[1] - 1
    assert math.isclose(float(nll.mean()), float(loss), rel_tol=1e-4)


def test_an_unrelated_memory_is_read_and_an_empty_one_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the command: the JSON and markdown it writes hold the check's findings."""
    options = ["--adapter", "fresh-msw", "--n", "3", "--no-progress", "--out", str(tmp_path)]
    cli_main(["eval", "perplexity", *options])  # base_slice heads: small but non-zero reads
    assert "held-out synthetic chats" in capsys.readouterr().out
    result = json.loads((tmp_path / "perplexity.json").read_text())
    assert result["chats"] == 3 and result["tokens"] > 100 and result["goal_ratio"] == 1.05
    assert result["max_abs_logit_diff_empty_state"] == 0.0
    assert result["ppl_unrelated_memory"] != result["ppl_bare"]  # the memory really is read
    assert result["ratio"] == pytest.approx(1.0, abs=0.02)  # an untrained adapter barely steers
    low, high = result["ratio_ci_per_chat"]
    assert low <= high
    assert (tmp_path / "perplexity.md").read_text().startswith("| text |")
    with pytest.raises(ValueError, match="at least 2 chats"):
        perplexity_check(get_engine(adapter="fresh-msw"), held_out_chats(1))


def test_held_out_chats_are_held_out_and_chatty() -> None:
    chats = held_out_chats(8)
    assert len(chats) == 8 and all(len(chat) >= 4 for chat in chats)
    assert {m["role"] for chat in chats for m in chat} == {"user", "assistant"}


@pytest.mark.skipif(not LOCOMO.is_file(), reason=f"no LoCoMo data at {LOCOMO}")
def test_locomo_windows() -> None:
    chats = locomo_chats(LOCOMO, 3, turns=12)
    assert len(chats) == 3 and all(len(chat) == 12 for chat in chats)
    assert all(m["content"] for chat in chats for m in chat)
