"""The engine on the real embedded SmolLM2 weights: exactness, stats, and the demo job."""

from __future__ import annotations

import pytest
import torch

from langchain_deltamem import demo
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.injection import attach
from langchain_deltamem.segments import encode_segments

pytestmark = pytest.mark.slow

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "My locker code is 4471 and my cat is called Juniper."},
    {"role": "assistant", "content": "Noted: locker 4471, cat Juniper."},
]


def _prompt(tokenizer, text: str) -> torch.Tensor:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


@pytest.mark.parametrize("granularity", ["token", "segment"])
def test_zero_state_and_fresh_adapter_equal_backbone(smollm2, granularity: str) -> None:
    model, tokenizer = smollm2
    ids = _prompt(tokenizer, "What is the capital of France?")
    with torch.no_grad():
        bare = model(ids).logits
        handle = attach(model, DeltaMemConfig(write_granularity=granularity), seed=0)
        state = handle.new_state()
        with handle.memory(state):  # zero state, writes off
            assert torch.equal(model(ids).logits, bare)
        handle.detach()
        # a fresh adapter with zero correction heads stays exact even while it writes
        handle = attach(
            model, DeltaMemConfig(write_granularity=granularity, output_init="zero"), seed=0
        )
        state = handle.new_state()
        segments = torch.zeros_like(ids)
        with handle.memory(state, write=True, segment_ids=segments):
            assert torch.equal(model(ids).logits, bare)
        assert any(t.abs().sum() > 0 for t in state.layers), "the write must have happened"
        handle.detach()
        assert torch.equal(model(ids).logits, bare)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_written_memory_steers_every_layer(smollm2, attn: str) -> None:
    model, tokenizer = smollm2
    previous = model.config._attn_implementation
    model.set_attn_implementation(attn)
    try:
        handle = attach(model, DeltaMemConfig(), seed=0)
        state = handle.new_state()
        history = encode_segments(tokenizer, MESSAGES)
        ids = _prompt(tokenizer, "What is my locker code?")
        with torch.no_grad():
            with handle.memory(state, write=True, segment_ids=history.segment_ids) as write:
                model(history.input_ids)
            assert write.writes.tolist() == [[2]]  # one write per non-system message
            before = [t.clone() for t in state.layers]
            with handle.memory(state) as read:
                logits = model(ids).logits
            with handle.memory(handle.new_state()):
                zero_logits = model(ids).logits
        assert all(torch.equal(a, b) for a, b in zip(before, state.layers, strict=True))
        ratios = read.correction_ratio()
        assert sorted(ratios) == list(range(30))
        assert all(r["q"] > 0 and r["o"] > 0 for r in ratios.values())
        assert not torch.equal(logits, zero_logits)
    finally:
        model.set_attn_implementation(previous)


@pytest.mark.parametrize("adapter", [None, "smollm2-tsw"])
def test_demo_recalls_from_memory_next_to_the_swapped_control(capsys, adapter) -> None:
    """The packaged adapters (the default and the token-write one) make the stored value more
    likely than another conversation's memory of the same kind does (and far more than an
    empty memory), on held-out values."""
    result = demo.run(max_new_tokens=8, adapter=adapter)
    out = capsys.readouterr().out
    assert f"Q (prompt = system message + question only): {demo.QUESTION}" in out
    assert set(result["replies"]) == set(demo.CONVERSATIONS)
    assert all(reply for reply in result["replies"].values())
    nll = result["nll"]
    for owner in demo.STORED:
        assert nll[owner][owner] < nll["empty"][owner]
        assert result["swapped_minus_right"][owner] > 0
