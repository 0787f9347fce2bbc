"""Chat messages → token ids + segment ids, the input of a segment write (SSW).

Segments follow the chat template: the tokens the template adds for message ``i`` belong to
segment ``i``; system messages get ``-1`` and are never written (they are the standing
instructions, in every prompt anyway). The template is rendered message by message, so each
segment holds exactly the tokens that message contributes to a real prompt, role markers
included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

NO_SEGMENT = -1


@dataclass(frozen=True)
class EncodedSegments:
    """One conversation rendered for a writing forward pass.

    Attributes:
        input_ids: ``[1, T]`` token ids.
        segment_ids: ``[1, T]``; ``-1`` for system tokens, else the message's segment number.
        sources: the role of each segment (``user``, ``assistant``, ``tool``, …), in order.
    """

    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    sources: tuple[str, ...]

    @property
    def num_segments(self) -> int:
        return len(self.sources)


def encode_segments(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    *,
    content_only: bool = False,
) -> EncodedSegments:
    """Render ``messages`` with the tokenizer's chat template, one segment per message.

    Put a system message first when the template would otherwise invent one (SmolLM2's does):
    its tokens are then marked ``-1`` instead of being charged to the first user message.
    With ``content_only`` the tokens the template adds around a message's content (role
    markers, end-of-turn tokens) are marked ``-1`` too: they are the same in every message, so
    they would dominate its mean (the adapter's ``segment_tokens="content"``).

    Raises:
        ValueError: empty input, a message without ``role``/``content``, or a template whose
            rendering of a conversation is not a prefix of the rendering with one more message.
    """
    if not messages:
        raise ValueError("encode_segments: no messages to write")
    for i, message in enumerate(messages):
        if "role" not in message or not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} needs a 'role' and a text 'content': {dict(message)!r}")
    ids: list[int] = []
    segments: list[int] = []
    sources: list[str] = []
    rendered = ""
    for i, message in enumerate(messages):
        text = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not text.startswith(rendered):
            raise ValueError(
                f"the chat template re-renders earlier messages when message {i} is added; "
                "segment boundaries cannot be derived from it"
            )
        added = text[len(rendered) :]
        rendered = text
        if message["role"] == "system":
            segment = NO_SEGMENT
        else:
            segment = len(sources)
            sources.append(message["role"])
        if content_only and segment != NO_SEGMENT:
            piece, marks = _content_marks(tokenizer, added, message["content"], segment)
        else:
            piece = tokenizer(added, add_special_tokens=False)["input_ids"]
            marks = [segment] * len(piece)
        ids.extend(piece)
        segments.extend(marks)
    return EncodedSegments(
        torch.tensor([ids], dtype=torch.long),
        torch.tensor([segments], dtype=torch.long),
        tuple(sources),
    )


def _content_marks(
    tokenizer: PreTrainedTokenizerBase, added: str, content: str, segment: int
) -> tuple[list[int], list[int]]:
    """Ids of the text a message adds, and ``segment`` for the tokens of its content, ``-1``
    for the template's tokens around it (found by character offsets)."""
    encoded = tokenizer(added, add_special_tokens=False, return_offsets_mapping=True)
    piece = list(encoded["input_ids"])
    stripped = content.strip()
    start = added.find(stripped) if stripped else -1
    if start < 0:  # the template changed the content beyond recognition: keep every token
        return piece, [segment] * len(piece)
    end = start + len(stripped)
    marks = [
        segment if (a < end and b > start) else NO_SEGMENT for a, b in encoded["offset_mapping"]
    ]
    return piece, marks
