"""`writing`: turning chat messages into memory writes.

Turn groups, the ``TOOL=INDEX`` options, and batched writes, which must leave each
conversation's state as a separate write does (within 1e-5) on the reliability tests' tiny
engine (`reliability_support`).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from reliability_support import NOTES, TOL, build_tiny_engine, max_difference

from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.writing import (
    parse_tool_states,
    turn_groups,
    write_messages,
    write_messages_batch,
)


@pytest.fixture(scope="module")
def engine(tiny_engine: DeltaMemEngine) -> DeltaMemEngine:
    return tiny_engine


def test_turn_groups_end_at_each_assistant_message() -> None:
    u = {"role": "user", "content": "u"}
    a = {"role": "assistant", "content": "a"}
    t = {"role": "tool", "content": "t"}
    assert turn_groups([u, a, u, a, t, a, u]) == [[u, a], [u, a], [t, a], [u]]
    assert turn_groups([]) == []


def test_tool_state_options() -> None:
    assert parse_tool_states(["search=1", "calendar=3"]) == {"search": 1, "calendar": 3}
    for bad in ("search", "=1", "search=x", "search=-1"):
        with pytest.raises(ValueError, match="TOOL=INDEX"):
            parse_tool_states([bad])


# --- batched writes -----------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:message 0 .* in pieces")
@pytest.mark.parametrize(
    "config",
    [DeltaMemConfig(), DeltaMemConfig(write_granularity="token"), DeltaMemConfig(num_states=4)],
    ids=["ssw", "tsw", "msw"],
)
def test_batched_writes_equal_separate_writes(embedded: Any, config: DeltaMemConfig) -> None:
    engine = build_tiny_engine(embedded[1], config=config)
    handle, tokenizer = engine.handle, engine.tokenizer
    calls = [
        *NOTES,
        [
            {"role": "user", "content": "What does the calculator say?"},
            {"role": "tool", "content": "391", "source": "tool:calculator"},
            {"role": "assistant", "content": "It says 391."},
        ],
        [{"role": "user", "content": "A note long enough for two forwards. " * 12}],
    ]
    limits = {"max_segment_tokens": 48, "max_forward_tokens": 120}  # the last call: 3 forwards
    alone = []
    for call in calls:
        state = handle.new_state()
        write_messages(handle, tokenizer, state, call, **limits)
        alone.append(state)
    batched = [handle.new_state() for _ in calls]
    write_messages_batch(handle, tokenizer, batched, calls, **limits)
    for i, (a, b) in enumerate(zip(alone, batched, strict=True)):
        assert torch.equal(a.write_counts, b.write_counts), f"call {i}"
        assert max_difference(a, b) <= TOL, f"call {i}: {max_difference(a, b)}"
        assert float(a.layers[0].abs().max()) > 0.01  # something was written


def test_batched_write_refuses_mismatched_inputs(engine: DeltaMemEngine) -> None:
    states = [engine.handle.new_state()]
    with pytest.raises(ValueError, match="1 states for 2 message lists"):
        write_messages_batch(engine.handle, engine.tokenizer, states, NOTES[:2])
    with pytest.raises(ValueError, match="holds 2 conversations"):
        write_messages_batch(
            engine.handle, engine.tokenizer, [engine.handle.new_state(2)], NOTES[:1]
        )
