"""Batched replies equal running each conversation alone.

`batched_generation.generate_batch` (one left-padded prefill, one decode loop) must give every
row the greedy tokens it gets alone, whatever the other rows do: different prompt lengths
(padding), stop strings and budgets ending rows at different steps, a forced tool call's JSON
constraint on some rows only, a row whose constraint fails. Then through `ChatDeltaMem`:
concurrent threads and asyncio tasks are grouped into batches and get the replies they get one
at a time. (Batched writes are tested in ``test_writing.py``.)

Runs on the reliability tests' tiny engine (the embedded tokenizer and chat template, a 2-layer
seeded Llama, a randomised adapter so memory visibly changes the logits).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage
from reliability_support import NOTES, TOL, max_difference, register_engine, unregister_engine

from langchain_deltamem.batched_generation import BatchRequest, generate_batch
from langchain_deltamem.batcher import MicroBatcher, get_batcher
from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.generation import GenerationSettings, generate
from langchain_deltamem.json_constraint import JsonSchemaConstraint
from langchain_deltamem.memory import DeltaMemory
from langchain_deltamem.state import MemoryState
from langchain_deltamem.tool_calling import to_tool_schemas
from langchain_deltamem.writing import write_messages

QUESTIONS = [
    "What is my code?",
    "When is the meeting, and where?",
    "Tell me a long story about the cat and the garden and the river please.",
    "Hi",
]


def weather(city: str, days: int) -> str:
    """Forecast for a city.

    Args:
        city: the city
        days: how many days
    """
    return ""


@pytest.fixture(scope="module")
def engine(tiny_engine: DeltaMemEngine) -> DeltaMemEngine:
    return tiny_engine


def prompt(engine: DeltaMemEngine, text: str) -> torch.Tensor:
    chat = [{"role": "user", "content": text}]
    return engine.tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


def written_states(engine: DeltaMemEngine) -> list[MemoryState]:
    states = []
    for notes in NOTES:
        state = engine.handle.new_state()
        write_messages(engine.handle, engine.tokenizer, state, notes)
        states.append(state)
    return states


# --- the batched decode loop --------------------------------------------------------------
def test_batched_replies_are_token_identical_to_each_alone(engine: DeltaMemEngine) -> None:
    states = written_states(engine)
    tools = to_tool_schemas([weather])
    settings = [
        GenerationSettings(max_tokens=12),
        GenerationSettings(max_tokens=20, stop=(" the", "e")),  # ends at a stop string
        GenerationSettings(max_tokens=5),  # ends first, by its budget
        GenerationSettings(max_tokens=30),  # a forced tool call
    ]
    ids = [prompt(engine, q) for q in QUESTIONS]
    assert len({int(i.shape[1]) for i in ids}) == len(ids)  # every row is padded differently

    def constraint(i: int) -> Any:
        return JsonSchemaConstraint(engine.tokenizer, tools, "weather") if i == 3 else None

    alone = [
        generate(
            engine.model,
            engine.tokenizer,
            ids[i],
            settings[i],
            logits_processor=constraint(i),
            memory=engine.handle.memory(states[i]),
        )
        for i in range(4)
    ]
    chunks: list[list[str]] = [[] for _ in range(4)]
    done: list[Any] = [None] * 4
    requests = [
        BatchRequest(
            ids[i],
            settings[i],
            constraint(i),
            on_chunk=lambda c, i=i: chunks[i].append(c.text),
            on_done=lambda r, i=i: done.__setitem__(i, r),
        )
        for i in range(4)
    ]
    batched = generate_batch(
        engine.model,
        engine.tokenizer,
        requests,
        memory=engine.handle.memory(MemoryState.concat(states)),
    )
    for i, (a, b) in enumerate(zip(alone, batched, strict=True)):
        assert b.token_ids == a.token_ids, f"row {i}"
        assert (b.text, b.finish_reason, b.prompt_tokens) == (
            a.text,
            a.finish_reason,
            a.prompt_tokens,
        )
        assert "".join(chunks[i]) == b.text and done[i] is b
    assert {r.finish_reason for r in batched} == {"stop", "length"}
    assert len({r.completion_tokens for r in batched}) > 1  # rows ended at different steps
    assert batched[3].text.startswith("<tool_call>") and '"weather"' in batched[3].text
    # memory is read per row: another conversation's state changes that row's reply
    swapped = generate_batch(
        engine.model,
        engine.tokenizer,
        [BatchRequest(ids[0], settings[0])],
        memory=engine.handle.memory(states[1]),
    )
    assert swapped[0].token_ids != alone[0].token_ids


def test_a_failing_row_ends_alone(engine: DeltaMemEngine) -> None:
    def broken(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        return logits[:3]  # a wrong shape

    settings = GenerationSettings(max_tokens=6)
    ids = [prompt(engine, q) for q in QUESTIONS[:2]]
    states = written_states(engine)[:2]
    outcomes = generate_batch(
        engine.model,
        engine.tokenizer,
        [BatchRequest(ids[0], settings, broken), BatchRequest(ids[1], settings)],
        memory=engine.handle.memory(MemoryState.concat(states)),
    )
    assert isinstance(outcomes[0], ValueError) and "logits_processor" in str(outcomes[0])
    alone = generate(
        engine.model, engine.tokenizer, ids[1], settings, memory=engine.handle.memory(states[1])
    )
    assert outcomes[1].token_ids == alone.token_ids


# --- through the chat model ---------------------------------------------------------------
@pytest.fixture
def registered(engine: DeltaMemEngine) -> Any:
    key = register_engine(engine)
    yield engine
    unregister_engine(key)


def chat(memory: DeltaMemory, **params: Any) -> ChatDeltaMem:
    defaults = {"backbone": memory.engine.backbone, "adapter": memory.engine.adapter}
    return ChatDeltaMem(**{**defaults, "memory": memory, "max_tokens": 10, **params})


def histories(memory: DeltaMemory) -> list[str]:
    for i, notes in enumerate(NOTES):
        memory.write(notes, scope=f"c{i}")
    return [f"c{i}" for i in range(len(NOTES))]


def test_concurrent_threads_are_batched_and_reply_as_alone(registered: DeltaMemEngine) -> None:
    solo_memory = DeltaMemory(registered)
    scopes = histories(solo_memory)
    solo = chat(solo_memory, max_batch_size=1)
    expected = [
        solo.invoke(q, config={"configurable": {"thread_id": s}}).content
        for s, q in zip(scopes, QUESTIONS, strict=True)
    ]
    memory = DeltaMemory(registered)
    histories(memory)
    model = chat(memory, batch_wait=0.5)  # long enough for all four threads to join
    batcher = get_batcher(registered, model.max_batch_size, model.batch_wait)
    before = len(batcher.batch_sizes)
    replies: dict[int, str] = {}
    barrier = threading.Barrier(len(scopes))

    def ask(i: int) -> None:
        barrier.wait()
        config = {"configurable": {"thread_id": scopes[i]}}
        replies[i] = model.invoke(QUESTIONS[i], config=config).content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(scopes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [replies[i] for i in range(len(scopes))] == expected
    assert max(batcher.batch_sizes[before:]) > 1  # they did share a batch
    # and the turns' writes equal the one-at-a-time ones
    memory.flush()
    solo_memory.flush()
    for s in scopes:
        assert max_difference(memory.state(scope=s), solo_memory.state(scope=s)) <= TOL


def test_concurrent_asyncio_tasks_are_batched(registered: DeltaMemEngine) -> None:
    solo_memory = DeltaMemory(registered)
    scopes = histories(solo_memory)
    solo = chat(solo_memory, max_batch_size=1)
    expected = [
        solo.invoke(q, config={"configurable": {"thread_id": s}}).content
        for s, q in zip(scopes, QUESTIONS, strict=True)
    ]
    memory = DeltaMemory(registered)
    histories(memory)
    model = chat(memory, batch_wait=0.5)
    batcher = get_batcher(registered, model.max_batch_size, model.batch_wait)
    before = len(batcher.batch_sizes)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(
                model.ainvoke(q, config={"configurable": {"thread_id": s}})
                for s, q in zip(scopes, QUESTIONS, strict=True)
            )
        )

    replies = asyncio.run(main())
    assert [r.content for r in replies] == expected
    assert max(batcher.batch_sizes[before:]) > 1


def test_batcher_settings_are_checked(engine: DeltaMemEngine) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(engine, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait"):
        MicroBatcher(engine, max_wait=-1)
    batcher = MicroBatcher(engine)
    with pytest.raises(ValueError, match="one conversation"):
        batcher.submit(prompt(engine, "Hi"), GenerationSettings(), engine.handle.new_state(2))
    with pytest.raises(ValueError, match="empty"):
        batcher.submit(
            torch.zeros(0, dtype=torch.long), GenerationSettings(), engine.handle.new_state()
        )


def test_a_forced_tool_call_in_one_row_only(registered: DeltaMemEngine) -> None:
    memory = DeltaMemory(registered)
    scopes = histories(memory)[:2]
    model = chat(memory, batch_wait=0.5, max_tokens=40, write_memory=False)
    forced = model.bind_tools([weather], tool_choice="weather")
    results: dict[int, AIMessage] = {}
    barrier = threading.Barrier(2)

    def ask(i: int) -> None:
        barrier.wait()
        runnable = forced if i == 0 else model
        config = {"configurable": {"thread_id": scopes[i]}}
        results[i] = runnable.invoke([HumanMessage(QUESTIONS[i])], config=config)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].tool_calls and results[0].tool_calls[0]["name"] == "weather"
    assert not results[1].tool_calls
    alone = chat(memory, max_batch_size=1, max_tokens=40, write_memory=False)
    config = {"configurable": {"thread_id": scopes[1]}}
    assert results[1].content == alone.invoke([HumanMessage(QUESTIONS[1])], config=config).content
