"""The trained adapters inside the package: the default of the embedded backbone, its MSW form
(the SSW maps shared by four states), the token-write adapter, and the guarantees a shipped
adapter keeps."""

from __future__ import annotations

import pytest
import torch

from langchain_deltamem.adapter_files import AdapterFileError, read_adapter, widen_states
from langchain_deltamem.backbones import EMBEDDED_BACKBONE
from langchain_deltamem.engine import (
    DEFAULT_ADAPTER,
    default_adapter,
    get_engine,
    packaged_adapter_path,
)
from langchain_deltamem.prompts import chat_ids
from langchain_deltamem.writing import SourceRouter, write_history

pytestmark = pytest.mark.slow

HISTORY = [
    {"role": "user", "content": "Favourite colour? Definitely deep blue-cherry."},
    {"role": "assistant", "content": "Saved: deep blue-cherry."},
]
TOOL_RESULT = {"role": "tool", "content": "Forecast: light rain, 12 °C.", "source": "weather"}
QUESTION = [{"role": "user", "content": "Which colour did I call my favourite?"}]


def _logits(engine, state) -> torch.Tensor:
    ids = chat_ids(engine.tokenizer, QUESTION)
    with torch.no_grad():
        if state is None:
            return engine.model(ids, use_cache=False).logits
        with engine.handle.memory(state, track_corrections=False):
            return engine.model(ids, use_cache=False).logits


def test_the_embedded_backbone_defaults_to_the_trained_adapter_and_others_start_fresh() -> None:
    assert default_adapter(None) == default_adapter(EMBEDDED_BACKBONE) == DEFAULT_ADAPTER
    assert DEFAULT_ADAPTER == "smollm2-ssw"
    assert default_adapter("someone/other-model") == "fresh"
    assert get_engine().adapter == "smollm2-ssw"
    with pytest.raises(ValueError, match="no packaged adapter 'nope'"):
        packaged_adapter_path("nope")


@pytest.mark.parametrize("adapter", [None, "smollm2-tsw"])
def test_a_packaged_adapter_reads_an_empty_memory_as_the_bare_backbone(adapter) -> None:
    engine = get_engine(adapter=adapter)
    assert torch.equal(_logits(engine, engine.handle.new_state()), _logits(engine, None))
    with torch.no_grad():
        written = write_history(engine.handle, engine.tokenizer, HISTORY)
    assert not torch.allclose(_logits(engine, written), _logits(engine, None))


def test_the_token_write_adapter_keeps_every_content_token() -> None:
    """``smollm2-tsw`` writes each content token (not template tokens) without forgetting:
    the write path that carried the most content in training (docs/results/training.md)."""
    config = get_engine(adapter="smollm2-tsw").handle.config
    assert (config.write_granularity, config.segment_tokens, config.update_mode) == (
        "token",
        "content",
        "plain",
    )
    assert (config.rank, config.num_states) == (16, 1)


@pytest.mark.parametrize(
    ("single", "wide"), [("smollm2-ssw", "smollm2-msw"), ("smollm2-tsw", "smollm2-msw-tsw")]
)
def test_the_msw_form_reads_a_conversation_exactly_as_its_single_state_adapter(
    single: str, wide: str
) -> None:
    """Written into state 0 alone, the widened adapter gives the single-state logits; a tool
    result goes to a state of its own and changes what is read."""
    one, msw = get_engine(adapter=single), get_engine(adapter=wide)
    assert (msw.handle.config.num_states, one.handle.config.num_states) == (4, 1)
    assert msw.handle.config.write_granularity == one.handle.config.write_granularity
    with torch.no_grad():
        one_state = write_history(one.handle, one.tokenizer, HISTORY)
        router = SourceRouter(4, {"weather": 2})
        msw_state = write_history(msw.handle, msw.tokenizer, HISTORY, router=router)
        counts = msw_state.write_counts[0].tolist()
        assert counts[0] == one_state.write_counts[0].item() > 0 and counts[1:] == [0, 0, 0]
        torch.testing.assert_close(_logits(msw, msw_state), _logits(one, one_state))
        with_tool = write_history(msw.handle, msw.tokenizer, [*HISTORY, TOOL_RESULT], router=router)
    tool_counts = with_tool.write_counts[0].tolist()
    assert (
        tool_counts[0] == counts[0] and tool_counts[2] > 0 and tool_counts[1] == tool_counts[3] == 0
    )
    assert not torch.allclose(_logits(msw, with_tool), _logits(msw, msw_state))


def test_only_single_state_adapters_can_be_widened() -> None:
    config, tensors, _ = read_adapter(packaged_adapter_path("smollm2-ssw"))
    with pytest.raises(AdapterFileError, match="only a single-state adapter"):
        widen_states(config.model_copy(update={"num_states": 2}), tensors, 4)
