"""Writes off the reply's path: ordering, read-your-writes, durability, progress and cancel.

`ChatDeltaMem` returns the reply before the turn is written; `DeltaMemory.write_later` logs the
turn as pending (in the store before it returns) and the background writer applies it. These
tests hold the background writer back (a gate in `_settle_some`) to look at the moment between
the reply and the write, and check that:

* the reply returns while the write is pending, and the final state equals writing in line;
* the scope's next operation applies its pending writes first, in order (a conversation sees
  its own last turn), while other scopes never wait for them;
* a stored record with pending writes is completed when loaded, exactly once;
* long writes report progress and a cancelled write leaves the scope as it was.

Runs on the reliability tests' tiny engine (embedded tokenizer, seeded 2-layer Llama).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.memory import InMemoryStore

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.memory import DEFAULT_NAMESPACE, DeltaMemory, MemoryRecordError
from langchain_deltamem.writing import WriteCancelled


@pytest.fixture(scope="module")
def engine(tiny_engine: DeltaMemEngine) -> DeltaMemEngine:
    return tiny_engine


class Gate:
    """Holds the background writer of a memory until opened (the writer's batches are logged)."""

    def __init__(self, memory: DeltaMemory) -> None:
        self.open = threading.Event()
        self.batches: list[list[str]] = []
        original = memory._settle_some

        def gated(names: list[str]) -> None:
            self.open.wait(30)
            self.batches.append(sorted(set(names)))
            original(names)

        memory._settle_some = gated  # type: ignore[method-assign]


def chat(memory: DeltaMemory, **params: Any) -> ChatDeltaMem:
    defaults = {"backbone": memory.engine.backbone, "adapter": memory.engine.adapter}
    return ChatDeltaMem(**{**defaults, "memory": memory, "max_tokens": 6, **params})


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def state_bytes(memory: DeltaMemory, scope: str) -> bytes:
    return memory.state(scope=scope).to_bytes()


def test_the_reply_returns_before_the_write_and_the_write_equals_an_inline_one(
    engine: DeltaMemEngine,
) -> None:
    memory = DeltaMemory(engine)
    gate = Gate(memory)
    reply = chat(memory).invoke("My locker code is 4471.", config=thread("a"))
    assert memory.pending_writes(scope="a") == 1  # the reply is out, the write is not
    gate.open.set()
    memory.flush()
    assert memory.pending_writes(scope="a") == 0
    reference = DeltaMemory(engine)
    reference.write([HumanMessage("My locker code is 4471."), reply], scope="a")
    assert state_bytes(memory, "a") == state_bytes(reference, "a")
    assert (
        json.loads(memory.export(scope="a"))["log"]
        == json.loads(reference.export(scope="a"))["log"]
    )


def test_the_next_turn_reads_the_last_turn_and_writes_keep_their_order(
    engine: DeltaMemEngine,
) -> None:
    memory = DeltaMemory(engine)
    Gate(memory)  # never opened: only the scope's own next operation can apply its writes
    model = chat(memory)
    first = model.invoke("My locker code is 4471.", config=thread("a"))
    history = [HumanMessage("My locker code is 4471."), first, HumanMessage("And my cat?")]
    second = model.invoke(history, config=thread("a"))
    # the reference runs each turn after writing the previous one, in line
    reference = DeltaMemory(engine)
    ref_model = chat(reference, write_memory=False)
    ref_first = ref_model.invoke("My locker code is 4471.", config=thread("a"))
    reference.write([HumanMessage("My locker code is 4471."), ref_first], scope="a")
    ref_second = ref_model.invoke(history, config=thread("a"))
    reference.write([HumanMessage("And my cat?"), ref_second], scope="a")
    assert (first.content, second.content) == (ref_first.content, ref_second.content)
    assert memory.pending_writes(scope="a") == 1  # the second turn waits; the first went in
    assert state_bytes(memory, "a") == state_bytes(reference, "a")  # settles, in order
    log = json.loads(memory.export(scope="a"))["log"]
    assert [m["content"] for group in log for m in group] == [
        "My locker code is 4471.",
        first.content,
        "And my cat?",
        second.content,
    ]


def test_queued_writes_of_many_scopes_apply_in_one_batch_and_in_order(
    engine: DeltaMemEngine,
) -> None:
    memory = DeltaMemory(engine, write_wait=0.2)
    gate = Gate(memory)
    reference = DeltaMemory(engine)
    for turn in range(3):
        for scope in ("a", "b", "c"):
            note = [HumanMessage(f"Note {turn} for {scope}: {turn * 7 + len(scope)}.")]
            memory.write_later(note, scope=scope)
            reference.write(note, scope=scope)
    assert [memory.pending_writes(scope=s) for s in "abc"] == [3, 3, 3]
    gate.open.set()
    deadline = time.monotonic() + 30
    while any(memory.pending_writes(scope=s) for s in "abc") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(len(batch) > 1 for batch in gate.batches), gate.batches  # scopes batched
    for scope in "abc":
        a, b = memory.state(scope=scope), reference.state(scope=scope)
        assert (
            max(float((x - y).abs().max()) for x, y in zip(a.layers, b.layers, strict=True)) <= 1e-5
        )
        assert torch.equal(a.write_counts, b.write_counts)
        log = json.loads(memory.export(scope=scope))["log"]
        assert log == json.loads(reference.export(scope=scope))["log"]


def test_other_scopes_never_wait_for_a_scope_being_written(engine: DeltaMemEngine) -> None:
    memory = DeltaMemory(engine)
    memory.write([HumanMessage("b's note")], scope="b")
    release, entered = threading.Event(), threading.Event()
    original = memory._write_into

    def slow(state: Any, messages: Any, *args: Any, **kwargs: Any) -> Any:
        if messages[0]["content"].startswith("slow"):
            entered.set()
            release.wait(30)
        return original(state, messages, *args, **kwargs)

    memory._write_into = slow  # type: ignore[method-assign]
    memory.write_later([HumanMessage("slow note for a")], scope="a")
    assert entered.wait(30)  # the background writer is inside a's write, holding a
    started = time.monotonic()
    chat(memory).invoke("What is b's note?", config=thread("b"))
    memory.write([HumanMessage("another note for b")], scope="b")
    assert time.monotonic() - started < 20 and not release.is_set()
    assert memory.pending_writes(scope="a") == 1
    release.set()
    memory.flush(scope="a")
    assert memory.pending_writes(scope="a") == 0


def test_a_stored_pending_write_is_applied_on_load_exactly_once(engine: DeltaMemEngine) -> None:
    store = InMemoryStore()
    memory = DeltaMemory(engine, store=store)
    Gate(memory)  # the process "dies" before the writer runs
    memory.write([HumanMessage("first note")], scope="s")
    memory.write_later([HumanMessage("second note"), AIMessage("Ok.")], scope="s")
    stored = store.get(DEFAULT_NAMESPACE, "s").value
    assert [m["content"] for m in stored["pending"][0]] == ["second note", "Ok."]
    reference = DeltaMemory(engine)
    reference.write([HumanMessage("first note")], scope="s")
    reference.write([HumanMessage("second note"), AIMessage("Ok.")], scope="s")
    expected = reference.export(scope="s")
    restarted = DeltaMemory(engine, store=store)
    assert restarted.export(scope="s") == expected
    assert "pending" not in store.get(DEFAULT_NAMESPACE, "s").value  # completed in the store
    again = DeltaMemory(engine, store=store)  # a second load applies nothing more
    assert again.export(scope="s") == expected
    # the new-message detection already counts the pending turn: nothing is queued twice
    assert (
        memory.write_later(
            [HumanMessage("second note"), AIMessage("Ok.")], scope="s", skip_written=True
        )
        == []
    )


def test_a_damaged_pending_list_is_refused(engine: DeltaMemEngine) -> None:
    store = InMemoryStore()
    memory = DeltaMemory(engine, store=store)
    gate = Gate(memory)
    memory.write_later([HumanMessage("note")], scope="s")
    original = store.get(DEFAULT_NAMESPACE, "s").value
    value = dict(original)
    value["pending"] = [[{"role": "user", "content": "edited", "source": "user"}]]
    store.put(DEFAULT_NAMESPACE, "s", value)
    with pytest.raises(MemoryRecordError, match="checksum"):
        DeltaMemory(engine, store=store).export(scope="s")
    value["pending"] = [[{"role": "system", "content": "x", "source": "system"}]]
    store.put(DEFAULT_NAMESPACE, "s", value)
    with pytest.raises(MemoryRecordError, match="pending"):
        DeltaMemory(engine, store=store).export(scope="s")
    # the intact record back, the pending write goes in (nothing left to fail at exit)
    store.put(DEFAULT_NAMESPACE, "s", original)
    gate.open.set()
    memory.flush()
    assert memory.pending_writes(scope="s") == 0


def test_long_writes_report_progress_and_cancel_without_a_trace(
    engine: DeltaMemEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.model.config, "max_position_embeddings", 600)  # many forwards
    memory = DeltaMemory(engine, max_segment_tokens=64)
    memory.write([HumanMessage("before")], scope="s")
    held = memory.export(scope="s")
    long = [
        HumanMessage(f"Part {i}: " + "words about the river and the hill. " * 30) for i in range(8)
    ]
    seen: list[tuple[int, int]] = []
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) == 2:
            cancel.set()

    with pytest.warns(UserWarning, match="in pieces"):
        with pytest.raises(WriteCancelled, match="cancelled after"):
            memory.write(long, scope="s", progress=progress, cancel=cancel)
    assert len(seen) == 2 and seen[0][0] < seen[1][0] < seen[1][1]
    assert memory.export(scope="s") == held  # nothing of the cancelled write stayed
    done: list[tuple[int, int]] = []
    with pytest.warns(UserWarning, match="in pieces"):
        memory.write(long, scope="s", progress=lambda d, t: done.append((d, t)))
    assert done[-1][0] == done[-1][1] and len(done) > 2


def test_the_settings_of_the_writer_are_checked(engine: DeltaMemEngine) -> None:
    with pytest.raises(ValueError, match="write_batch_size"):
        DeltaMemory(engine, write_batch_size=0)
    with pytest.raises(ValueError, match="write_wait"):
        DeltaMemory(engine, write_wait=-0.1)


def test_write_progress_reaches_langchain_callbacks(
    engine: DeltaMemEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct write, and a turn's pending write applied when the next turn starts, report
    their progress to the call's callbacks as ``deltamem_write_progress`` custom events."""
    from langchain_core.callbacks import BaseCallbackHandler

    class Recorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[tuple[str, dict]] = []

        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            self.events.append((name, data))

    monkeypatch.setattr(engine.model.config, "max_position_embeddings", 600)  # many forwards
    memory = DeltaMemory(engine, max_segment_tokens=64)
    long = [
        HumanMessage(f"Notes {i}: " + "words about the river and the hill. " * 60) for i in "ab"
    ]
    recorder = Recorder()
    with pytest.warns(UserWarning, match="in pieces"):
        memory.write(long, scope="s", callbacks=[recorder])
    assert len(recorder.events) > 1
    assert {name for name, _ in recorder.events} == {"deltamem_write_progress"}
    last = recorder.events[-1][1]
    assert last["scope"] == "s" and last["tokens_written"] == last["tokens_total"]
    Gate(memory)  # the turn's write stays pending until the next turn applies it
    model = chat(memory)
    with pytest.warns(UserWarning, match="in pieces|context budget"):
        first = model.invoke(long, config=thread("t"))
    assert memory.pending_writes(scope="t") == 1
    recorder = Recorder()
    model.invoke(
        [*long, first, HumanMessage("And?")], config={**thread("t"), "callbacks": [recorder]}
    )
    assert len(recorder.events) > 1 and recorder.events[-1][1]["scope"] == "t"


def test_pending_writes_are_applied_at_process_exit(engine: DeltaMemEngine) -> None:
    """The exit hook (registered with atexit) applies what every live memory still holds."""
    from langchain_deltamem import memory as memory_module

    store = InMemoryStore()
    memory = DeltaMemory(engine, store=store)
    Gate(memory)
    memory.write_later([HumanMessage("a note written at exit")], scope="s")
    assert "pending" in store.get(DEFAULT_NAMESPACE, "s").value
    memory_module._flush_at_exit()
    assert memory.pending_writes(scope="s") == 0
    assert "pending" not in store.get(DEFAULT_NAMESPACE, "s").value
    assert memory.stats(scope="s")["segments"] == 1
