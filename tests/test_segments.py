"""Chat messages → token ids + segment ids (the input of segment writes)."""

from __future__ import annotations

import pytest
import torch

from langchain_deltamem.segments import NO_SEGMENT, encode_segments

pytestmark = pytest.mark.slow


def test_segments_follow_the_chat_template(smollm2) -> None:
    _, tokenizer = smollm2
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I live in Oslo."},
        {"role": "assistant", "content": "Nice city."},
        {"role": "user", "content": "My sister is Ines."},
    ]
    encoded = encode_segments(tokenizer, messages)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(encoded.input_ids[0]) == whole
    assert encoded.sources == ("user", "assistant", "user")
    ids = encoded.segment_ids[0].tolist()
    assert ids == sorted(ids)  # segments are contiguous and in order
    assert set(ids) == {NO_SEGMENT, 0, 1, 2}
    for segment, message in zip(range(3), messages[1:], strict=True):
        tokens = encoded.input_ids[0][encoded.segment_ids[0] == segment]
        assert message["content"] in tokenizer.decode(tokens)
    system_tokens = encoded.input_ids[0][encoded.segment_ids[0] == NO_SEGMENT]
    assert "Be brief." in tokenizer.decode(system_tokens)
    assert encoded.input_ids.dtype == torch.long


def test_bad_messages_are_refused(smollm2) -> None:
    _, tokenizer = smollm2
    with pytest.raises(ValueError, match="no messages"):
        encode_segments(tokenizer, [])
    with pytest.raises(ValueError, match="role"):
        encode_segments(tokenizer, [{"content": "hi"}])
