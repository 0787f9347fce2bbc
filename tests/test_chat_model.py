"""`ChatDeltaMem` behaviour on the real embedded SmolLM2-135M-Instruct (CPU, greedy, short).

Each test gets its own `DeltaMemory` on the shared engine (``memory=``), so nothing written by
one test reaches another; states are compared bit for bit through `MemoryState.to_bytes()`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_deltamem import chat_model as chat_model_module
from langchain_deltamem import engine as engine_module
from langchain_deltamem import prompts as prompts_module
from langchain_deltamem.backbones import EMBEDDED_BACKBONE
from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import DEFAULT_ADAPTER, DeltaMemEngine
from langchain_deltamem.memory import DeltaMemory, MissingScopeError

pytestmark = pytest.mark.slow

H1 = HumanMessage("My locker code is 4471.")
A1 = AIMessage("Noted: locker 4471.")
H2 = HumanMessage("My cat is called Juniper.")
A2 = AIMessage("A lovely name.")
H3 = HumanMessage("What is my locker code?")


def make(memory: DeltaMemory, **params: Any) -> ChatDeltaMem:
    """A model whose calls without a thread id use the explicit default scope "default"."""
    return ChatDeltaMem(**{"memory": memory, "max_tokens": 8, "default_scope": "default", **params})


def state_bytes(memory: DeltaMemory, scope: str) -> bytes:
    return memory.state(scope=scope).to_bytes()


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def check_reply(message: BaseMessage) -> None:
    """Text, usage and response metadata, as every reply must carry them."""
    assert isinstance(message, AIMessage)
    assert isinstance(message.content, str) and message.content
    usage = message.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["model_name"] == EMBEDDED_BACKBONE
    assert message.response_metadata["finish_reason"] in ("stop", "length")


def collect(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


# --- loading -----------------------------------------------------------------------------
def test_construction_loads_nothing_until_the_first_call(monkeypatch) -> None:
    key = (EMBEDDED_BACKBONE, "fresh-tsw", "float32")
    # start from "never loaded" even if another test loaded this engine (restored afterwards)
    monkeypatch.delitem(engine_module._ENGINES, key, raising=False)
    monkeypatch.delitem(chat_model_module._SHARED_MEMORIES, key, raising=False)
    model = ChatDeltaMem(adapter="fresh-tsw", max_tokens=2, write_memory=False)
    repr(model)
    model._identifying_params  # noqa: B018 - must not load either
    assert key not in engine_module._ENGINES
    assert key not in chat_model_module._SHARED_MEMORIES
    check_reply(model.invoke("Hi", config=thread("construction")))
    assert key in engine_module._ENGINES
    assert model.engine is engine_module._ENGINES[key]
    assert model.engine.adapter == "fresh-tsw"


def test_instances_naming_the_same_model_share_one_engine_and_memory(
    engine: DeltaMemEngine,
) -> None:
    first = ChatDeltaMem()
    second = ChatDeltaMem(
        backbone=EMBEDDED_BACKBONE, adapter=DEFAULT_ADAPTER, dtype="float32", window=3
    )
    assert first.engine is second.engine is engine
    assert first.get_memory() is second.get_memory()
    own = DeltaMemory(engine)
    assert ChatDeltaMem(memory=own).get_memory() is own


# --- every entry point -------------------------------------------------------------------
def test_invoke_batch_and_stream_carry_usage_and_metadata(memory: DeltaMemory) -> None:
    model = make(memory)
    check_reply(model.invoke("Hello", config=thread("entry")))
    replies = model.batch(["Hello", "Name a colour."], config=thread("entry"))
    assert len(replies) == 2
    for reply in replies:
        check_reply(reply)
    chunks = list(model.stream("Hello", config=thread("entry")))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    full = collect(chunks)
    check_reply(full)
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].chunk_position == "last"
    assert full.response_metadata["memory_scope"] == "entry"


def test_ainvoke_and_astream_carry_usage_and_metadata(memory: DeltaMemory) -> None:
    model = make(memory)

    async def run() -> tuple[AIMessage, list[AIMessageChunk], list[AIMessage]]:
        reply = await model.ainvoke("Hello", config=thread("async"))
        chunks = [c async for c in model.astream("Hello", config=thread("async"))]
        batch = await model.abatch(["Hello", "Hi"], config=thread("async"))
        return reply, chunks, batch

    reply, chunks, batch = asyncio.run(run())
    check_reply(reply)
    for item in batch:
        check_reply(item)
    full = collect(chunks)
    check_reply(full)
    assert full.response_metadata["memory_scope"] == "async"
    assert memory.stats(scope="async")["segments"] > 0


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class _AsyncTokens(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_stream_yields_several_chunks_and_fires_token_callbacks(memory: DeltaMemory) -> None:
    model = make(memory, max_tokens=12, write_memory=False)
    prompt = "Write one sentence about the sea."
    handler = _Tokens()
    chunks = list(model.stream(prompt, config={"callbacks": [handler]}))
    text = "".join(str(c.content) for c in chunks)
    assert len([c for c in chunks if c.content]) >= 3
    assert len(handler.tokens) >= 3
    assert "".join(handler.tokens) == text
    # invoke streams internally too: the callbacks fire and add up to the reply
    handler = _Tokens()
    reply = model.invoke(prompt, config={"callbacks": [handler]})
    assert reply.content == text
    assert "".join(handler.tokens) == text
    # and so do the async paths
    async_handler = _AsyncTokens()

    async def run() -> list[AIMessageChunk]:
        return [c async for c in model.astream(prompt, config={"callbacks": [async_handler]})]

    async_chunks = asyncio.run(run())
    assert "".join(str(c.content) for c in async_chunks) == text
    assert "".join(async_handler.tokens) == text


def test_astream_does_not_block_the_event_loop(memory: DeltaMemory) -> None:
    model = make(memory, max_tokens=16, write_memory=False)

    async def run() -> tuple[list[float], float, float, int]:
        ticks: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = time.monotonic()
        chunks = [c async for c in model.astream("Tell me about the moon.")]
        end = time.monotonic()
        done.set()
        await task
        return ticks, start, end, len(chunks)

    ticks, start, end, count = asyncio.run(run())
    assert count >= 3
    during = [t for t in ticks if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *during], [*during, end], strict=True)]
    # blocking would show as one gap as long as the generation itself
    assert max(gaps) < max(0.5, (end - start) / 4), (max(gaps), end - start)
    assert len(during) >= 10


def test_streaming_through_a_chain(memory: DeltaMemory) -> None:
    """``model | parser`` streams: LangChain advances the model's stream in a fresh copy of the
    context at every step, so nothing the model sets in a context variable may outlive one."""
    chain = make(memory, max_tokens=6) | StrOutputParser()
    config = thread("chain")
    pieces = list(chain.stream("Hello", config=config))
    assert "".join(pieces)

    async def run() -> list[str]:
        return [p async for p in chain.astream("Good morning", config=config)]

    assert "".join(asyncio.run(run()))
    assert memory.stats(scope="chain")["segments"] == 4  # the thread id reached the model


def test_a_chain_passes_the_thread_id_to_the_model(memory: DeltaMemory) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{text}")])
    chain = prompt | make(memory, max_tokens=4) | StrOutputParser()
    assert chain.invoke({"text": "Hello"}, config=thread("chained"))
    assert memory.stats(scope="chained")["segments"] == 2
    assert memory.stats(scope="default")["segments"] == 0


def test_a_call_without_scope_is_refused_unless_a_default_was_chosen(
    memory: DeltaMemory,
) -> None:
    model = ChatDeltaMem(memory=memory, max_tokens=2)
    calls = (
        lambda: model.invoke("Hi"),
        lambda: list(model.stream("Hi")),
        lambda: asyncio.run(model.ainvoke("Hi")),
        lambda: model.batch(["Hi"]),
    )
    for call in calls:
        with pytest.raises(MissingScopeError, match=r"thread_id.*default_scope"):
            call()
    assert memory.scopes() == []  # nothing read or written anywhere
    shared = ChatDeltaMem(memory=memory, max_tokens=2, default_scope="everyone")
    check_reply(shared.invoke("Hi"))
    assert memory.scopes() == ["everyone"]
    check_reply(shared.invoke("Hi", config=thread("own")))  # a thread id still wins
    assert memory.scopes() == ["everyone", "own"]


# --- decoding parameters -----------------------------------------------------------------
def test_max_tokens_ends_with_length(memory: DeltaMemory) -> None:
    model = make(memory, max_tokens=3, write_memory=False)
    reply = model.invoke("Tell me a long story about a dragon.")
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["output_tokens"] == 3
    reply = model.invoke("Tell me a long story about a dragon.", max_tokens=2)
    assert reply.usage_metadata["output_tokens"] == 2


def test_stop_strings_cut_the_reply(memory: DeltaMemory) -> None:
    model = make(memory, max_tokens=16, write_memory=False)
    prompt = "List the days of the week."
    free = str(model.invoke(prompt).content)
    words = free.split()
    assert len(words) >= 4, free
    stop = words[2]
    expected = free[: free.find(stop)]
    for reply in (
        model.invoke(prompt, stop=[stop]),
        make(memory, max_tokens=16, write_memory=False, stop=[stop]).invoke(prompt),
        collect(list(model.stream(prompt, stop=[stop]))),
    ):
        assert reply.content == expected
        assert stop not in reply.content
        assert reply.response_metadata["finish_reason"] == "stop"


def test_seed_reproduces_sampling(memory: DeltaMemory) -> None:
    model = make(memory, max_tokens=12, temperature=1.0, seed=1234, write_memory=False)
    prompt = "Invent a name for a new planet."
    first = model.invoke(prompt).content
    assert model.invoke(prompt).content == first
    assert model.invoke(prompt, seed=1234).content == first
    others = {model.invoke(prompt, seed=seed).content for seed in (1, 2, 3)}
    assert others - {first}, "other seeds should sample something else"


# --- memory --------------------------------------------------------------------------------
def test_the_thread_id_picks_the_scope_that_is_written(
    memory: DeltaMemory, engine: DeltaMemEngine
) -> None:
    model = make(memory, max_tokens=4)
    reply = model.invoke("My locker code is 4471.", config=thread("A"))
    assert reply.response_metadata["memory_scope"] == "A"
    assert memory.stats(scope="A")["segments"] == 2  # the message and the reply
    assert memory.stats(scope="B")["segments"] == 0
    assert state_bytes(memory, "B") == engine.handle.new_state().to_bytes()
    # a scope set on the model wins over the thread id
    make(memory, max_tokens=4, scope="fixed").invoke("Hi", config=thread("A"))
    assert memory.stats(scope="fixed")["segments"] == 2
    assert memory.stats(scope="A")["segments"] == 2


def test_generation_leaves_the_state_bit_identical_until_the_write(
    memory: DeltaMemory, monkeypatch
) -> None:
    memory.write([H1, A1], scope="g")
    before = state_bytes(memory, "g")
    reader = make(memory, write_memory=False)
    reader.invoke([H3], config=thread("g"))
    list(reader.stream([H3], config=thread("g")))
    assert state_bytes(memory, "g") == before
    # with writing on, the state is still untouched when the post-reply write is queued
    seen: list[bytes] = []
    original = memory.write_later

    def spy(messages: Any, **kwargs: Any) -> Any:
        seen.append(state_bytes(memory, kwargs["scope"]))
        return original(messages, **kwargs)

    monkeypatch.setattr(memory, "write_later", spy)
    reply = make(memory).invoke([H1, A1, H3], config=thread("g"))
    assert seen == [before]
    assert state_bytes(memory, "g") != before
    assert memory.stats(scope="g")["segments"] == 4  # H3 and the reply
    reference = DeltaMemory(memory.engine)
    reference.write([H1, A1], scope="r")
    reference.write([H3, reply], scope="r")
    assert state_bytes(memory, "g") == state_bytes(reference, "r")


def test_the_prompt_holds_the_system_message_and_the_window_only(
    memory: DeltaMemory, monkeypatch
) -> None:
    rendered: list[list[BaseMessage]] = []
    original = prompts_module.render_prompt

    def spy(tokenizer: Any, messages: Any, *args: Any, **kwargs: Any) -> str:
        rendered.append(list(messages))
        return original(tokenizer, messages, *args, **kwargs)

    monkeypatch.setattr(prompts_module, "render_prompt", spy)
    system = SystemMessage("You are terse.")
    history = [system, H1, A1, H2, A2, H3]
    make(memory, window=2, max_tokens=2, write_memory=False).invoke(history)
    assert rendered[-1] == [system, A2, H3]
    make(memory, window=4, max_tokens=2, write_memory=False).invoke(history)
    assert rendered[-1] == [system, A1, H2, A2, H3]
    # no system message in the input: the model's system_prompt, if any, then the window
    make(memory, window=1, max_tokens=2, write_memory=False, system_prompt="Be kind.").invoke(
        history[1:]
    )
    assert [type(m) for m in rendered[-1]] == [SystemMessage, HumanMessage]
    assert rendered[-1][0].content == "Be kind." and rendered[-1][1] == H3
    # a window never starts on a tool result whose call was cut off
    call = AIMessage("", tool_calls=[{"name": "lookup", "args": {}, "id": "c1"}])
    result = ToolMessage("4471", tool_call_id="c1", name="lookup")
    make(memory, window=2, max_tokens=2, write_memory=False).invoke([H1, call, result, H3])
    assert rendered[-1] == [call, result, H3]


def test_each_turn_writes_only_its_new_messages(memory: DeltaMemory) -> None:
    model = make(memory, window=2, max_tokens=6)
    config = thread("turns")
    history: list[BaseMessage] = [H1]
    groups: list[list[BaseMessage]] = []
    for step, message in enumerate([H2, H3]):
        reply = model.invoke(history, config=config)
        groups.append([history[-1], reply])
        assert memory.stats(scope="turns")["segments"] == 2 * (step + 1)
        history = [*history, reply, message]
    reply = model.invoke(history, config=config)
    groups.append([history[-1], reply])
    assert memory.stats(scope="turns")["segments"] == 6
    reference = DeltaMemory(memory.engine)
    for group in groups:
        reference.write(group, scope="r")
    assert state_bytes(memory, "turns") == state_bytes(reference, "r")
    # a system message is an instruction, never written
    make(memory, max_tokens=2).invoke([SystemMessage("Be nice."), H1], config=thread("sys"))
    log = json.loads(memory.export(scope="sys"))["log"]
    assert [m["role"] for group in log for m in group] == ["user", "assistant"]


# --- tools and structured output -----------------------------------------------------------
@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


def test_a_forced_tool_call_is_parsed_with_an_id_and_json_arguments(memory: DeltaMemory) -> None:
    model = make(memory, write_memory=False)
    for choice in ("get_weather", "any"):
        reply = model.bind_tools([get_weather], tool_choice=choice).invoke(
            "What is the weather like in Paris?"
        )
        assert len(reply.tool_calls) == 1, reply
        call = reply.tool_calls[0]
        assert call["name"] == "get_weather"
        assert isinstance(call["id"], str) and call["id"]
        assert isinstance(call["args"], dict) and isinstance(call["args"]["city"], str)
        assert json.loads(json.dumps(call["args"])) == call["args"]
        assert reply.response_metadata["finish_reason"] == "tool_calls"
        assert reply.invalid_tool_calls == []
        assert reply.usage_metadata["output_tokens"] > 0


def test_a_tool_message_in_the_input_is_accepted_and_written(memory: DeltaMemory) -> None:
    model = make(memory, max_tokens=8).bind_tools([get_weather])
    call = AIMessage(
        "", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}]
    )
    result = ToolMessage("It is sunny in Paris.", tool_call_id="call-1", name="get_weather")
    reply = model.invoke(
        [HumanMessage("What is the weather like in Paris?"), call, result], config=thread("tool")
    )
    assert isinstance(reply, AIMessage)
    assert reply.usage_metadata["input_tokens"] > 0
    log = json.loads(memory.export(scope="tool"))["log"]
    sources = [m["source"] for group in log for m in group]
    assert sources == ["user", "assistant", "tool:get_weather", "assistant"]


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="The person's first name")
    age: int = Field(description="The person's age in years")


def test_with_structured_output_returns_an_instance(memory: DeltaMemory) -> None:
    model = make(memory, write_memory=False)
    person = model.with_structured_output(Person).invoke("Alice is 30 years old.")
    assert isinstance(person, Person)
    raw = model.with_structured_output(Person, include_raw=True).invoke("Bob is 41.")
    assert isinstance(raw["parsed"], Person) and raw["parsing_error"] is None


# --- invalid input -------------------------------------------------------------------------
IMAGE = HumanMessage(
    content=[
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], "at least one message"),
        ([ChatMessage(role="wizard", content="Abracadabra.")], "wizard"),
        ([H1, IMAGE], "image_url.*text only|text only.*image_url"),
    ],
    ids=["empty", "unknown-role", "image-block"],
)
def test_invalid_input_raises_and_leaves_memory_untouched(
    memory: DeltaMemory, messages: list[BaseMessage], error: str
) -> None:
    memory.write([H1, A1], scope="v")
    before = memory.export(scope="v")
    model = make(memory)
    with pytest.raises(ValueError, match=error):
        model.invoke(messages, config=thread("v"))
    with pytest.raises(ValueError, match=error):
        list(model.stream(messages, config=thread("v")))
    assert memory.export(scope="v") == before


@pytest.mark.parametrize("role", ["user", "assistant"])
def test_a_chat_message_with_a_known_role_is_accepted(memory: DeltaMemory, role: str) -> None:
    model = make(memory, max_tokens=2)
    check_reply(model.invoke([ChatMessage(role=role, content="Hello there.")], config=thread(role)))
    log = json.loads(memory.export(scope=role))["log"]
    assert log[0][0] == {"role": role, "content": "Hello there.", "source": role}


# --- a message longer than the context ------------------------------------------------------
def test_a_message_longer_than_the_context_is_written_in_pieces(
    memory: DeltaMemory, engine: DeltaMemEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a 2,048-token context stands in for SmolLM2's 8,192: the same code path, a quarter of
    # the CPU time (the 8k prefill made this the suite's slowest test)
    monkeypatch.setattr(engine.model.config, "max_position_embeddings", 2048)
    assert engine.context_length == 2048
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    per = len(engine.tokenizer(sentence, add_special_tokens=False)["input_ids"])
    text = sentence * (2600 // per + 1)
    tokens = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokens > engine.context_length
    model = make(memory, max_tokens=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reply = model.invoke(text, config=thread("long"))
    messages = [str(w.message) for w in caught]
    assert any("context budget" in m for m in messages), messages
    assert any("in pieces" in m for m in messages), messages
    check_reply(reply)
    assert reply.usage_metadata["input_tokens"] < engine.context_length
    stats = memory.stats(scope="long")
    pieces = -(-tokens // memory.max_segment_tokens)
    assert stats["writes_per_state"] == [pieces + 1]  # the message in pieces, then the reply
    assert stats["segments"] == 2  # the log keeps the two messages (what forget() indexes)


def test_concurrent_turns_on_two_threads(memory: DeltaMemory) -> None:
    """Two conversations at once through one model: each ends with its own two segments."""
    model = make(memory, max_tokens=4)
    errors: list[BaseException] = []

    def talk(name: str) -> None:
        try:
            check_reply(model.invoke(f"My name is {name}.", config=thread(name)))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=talk, args=(n,)) for n in ("Ada", "Bo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert memory.stats(scope="Ada")["segments"] == 2
    assert memory.stats(scope="Bo")["segments"] == 2
