"""`DeltaMemory` on the real embedded SmolLM2 with the default adapter.

Every test builds its own `DeltaMemory` on the shared engine (so no scope leaks between tests) and
compares states bit for bit through `MemoryState.to_bytes()` (tensors, write counts, metadata).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from langchain_deltamem.engine import DeltaMemEngine, get_engine
from langchain_deltamem.memory import (
    DEFAULT_NAMESPACE,
    DeltaMemory,
    MemoryRecordError,
    MissingScopeError,
    message_to_dict,
)
from langchain_deltamem.writing import WrittenSegment

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

H1 = HumanMessage("My locker code is 4471.")
A1 = AIMessage("Noted: locker 4471.")
H2 = HumanMessage("My cat is called Juniper.")
A2 = AIMessage("A lovely name for a cat.")
H3 = HumanMessage("I was born in Lisbon.")
A3 = AIMessage("Lisbon is a beautiful city.")


def state_bytes(memory: DeltaMemory, scope: str) -> bytes:
    return memory.state(scope=scope).to_bytes()


def empty_bytes(engine: DeltaMemEngine) -> bytes:
    return engine.handle.new_state().to_bytes()


def written(memory: DeltaMemory, groups: list[list]) -> bytes:
    """State bytes of a fresh scope (in a fresh memory) after writing ``groups`` call by call."""
    reference = DeltaMemory(memory.engine)
    for group in groups:
        reference.write(group, scope="reference")
    return state_bytes(reference, "reference")


def prompt_ids(engine: DeltaMemEngine, text: str) -> torch.Tensor:
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


# --- writing and reading ---------------------------------------------------------------------
def test_write_goes_to_its_scope_only(memory: DeltaMemory, engine: DeltaMemEngine) -> None:
    segments = memory.write([SystemMessage("be brief"), H1, A1], scope="a")
    assert segments == [
        WrittenSegment("user", H1.content),
        WrittenSegment("assistant", A1.content),
    ]  # the system message is context, never a segment
    assert memory.stats(scope="a")["segments"] == 2
    assert memory.stats(scope="a")["writes_per_state"] == [2]
    assert state_bytes(memory, "a") != empty_bytes(engine)
    assert memory.stats(scope="b")["segments"] == 0
    assert state_bytes(memory, "b") == empty_bytes(engine)
    assert memory.scopes() == ["a", "b"]


def test_thread_id_selects_the_scope(memory: DeltaMemory, engine: DeltaMemEngine) -> None:
    memory.write([H1], config={"configurable": {"thread_id": "t-1"}})
    assert memory.stats(scope="t-1")["segments"] == 1
    # no config, no scope, no default scope: refused, nothing written anywhere
    for call in (lambda: memory.write([H2]), memory.stats, memory.export, memory.reset):
        with pytest.raises(MissingScopeError, match=r"thread_id.*default_scope"):
            call()
    assert memory.scopes() == ["t-1"]
    shared = DeltaMemory(engine, default_scope="everyone")  # an explicit choice
    shared.write([H2])
    assert shared.stats(scope="everyone")["segments"] == 1
    assert shared.stats(config={"configurable": {"thread_id": "t-1"}})["segments"] == 0
    with pytest.raises(ValueError, match="non-empty string"):
        DeltaMemory(engine, default_scope="")
    # an explicit scope wins over the thread id
    memory.write([H3], scope="explicit", config={"configurable": {"thread_id": "t-1"}})
    assert memory.stats(scope="t-1")["segments"] == 1
    assert memory.stats(scope="explicit")["segments"] == 1
    with pytest.raises(ValueError, match="non-empty string"):
        memory.write([H1], scope="")


def test_reading_steers_the_model_and_leaves_the_state_bit_identical(
    memory: DeltaMemory, engine: DeltaMemEngine
) -> None:
    memory.write([H1, A1], scope="a")
    before = state_bytes(memory, "a")
    assert memory.stats(scope="a")["correction_ratio"] == {}
    ids = prompt_ids(engine, "What is my locker code?")
    with torch.inference_mode():
        with memory.reading(scope="a") as run:
            assert engine.handle.active_run() is run
            with_memory = engine.model(ids).logits
        with memory.reading(scope="empty"):
            without = engine.model(ids).logits
    assert engine.handle.active_run() is None
    assert not torch.equal(with_memory, without), "a written memory must change the logits"
    assert state_bytes(memory, "a") == before
    ratio = memory.stats(scope="a")["correction_ratio"]
    assert len(ratio) == len(engine.handle.layer_ids)
    assert all(v > 0 for heads in ratio.values() for v in heads.values())


def test_tool_results_are_written_with_their_tool_source(memory: DeltaMemory) -> None:
    result = ToolMessage("22 °C and sunny", tool_call_id="call-1", name="get_weather")
    call = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "c"}])
    segments = memory.write([H1, call, result], scope="tools")
    assert [s.source for s in segments] == ["user", "assistant", "tool:get_weather"]
    assert segments[1].text == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    )


def test_unknown_roles_and_media_blocks_are_refused_before_writing(
    memory: DeltaMemory, engine: DeltaMemEngine
) -> None:
    memory.write([H1], scope="a")
    before = state_bytes(memory, "a")
    with pytest.raises(ValueError, match="unknown message role 'wizard'"):
        memory.write([H2, {"role": "wizard", "content": "abracadabra"}], scope="a")
    image = HumanMessage(
        content=[
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]
    )
    with pytest.raises(ValueError, match="text only"):
        memory.write([H2, image], scope="a")
    assert state_bytes(memory, "a") == before
    assert memory.stats(scope="a")["segments"] == 1


# --- skip_written --------------------------------------------------------------------------
def test_skip_written_writes_only_the_new_messages(memory: DeltaMemory) -> None:
    memory.write([H1, A1], scope="s", skip_written=True)
    new = memory.write([H1, A1, H2, A2], scope="s", skip_written=True)
    assert [s.text for s in new] == [H2.content, A2.content]
    assert memory.stats(scope="s")["segments"] == 4
    assert state_bytes(memory, "s") == written(memory, [[H1, A1], [H2, A2]])
    # the same history again: nothing new, nothing written
    before = state_bytes(memory, "s")
    assert memory.write([H1, A1, H2, A2], scope="s", skip_written=True) == []
    assert state_bytes(memory, "s") == before
    # a sliding window that starts mid-history: only what follows the written tail
    new = memory.write([A1, H2, A2, H3], scope="s", skip_written=True)
    assert [s.text for s in new] == [H3.content]
    assert memory.stats(scope="s")["segments"] == 5
    # without skip_written the same messages are written again
    assert len(memory.write([H3], scope="s")) == 1
    assert memory.stats(scope="s")["segments"] == 6


# --- reset and fork ------------------------------------------------------------------------
def test_reset_empties_one_scope(memory: DeltaMemory, engine: DeltaMemEngine) -> None:
    memory.write([H1, A1], scope="a")
    memory.write([H2], scope="b")
    b_before = state_bytes(memory, "b")
    memory.reset(scope="a")
    assert state_bytes(memory, "a") == empty_bytes(engine)
    stats = memory.stats(scope="a")
    assert stats["segments"] == 0 and stats["writes_per_state"] == [0]
    assert state_bytes(memory, "b") == b_before
    # after a reset, previously written messages count as new again
    assert len(memory.write([H1, A1], scope="a", skip_written=True)) == 2
    assert state_bytes(memory, "a") == written(memory, [[H1, A1]])


def test_fork_copies_and_then_stays_independent(memory: DeltaMemory) -> None:
    memory.write([H1, A1], scope="src")
    memory.write([H3], scope="dst")  # replaced by the fork
    memory.fork("src", "dst")
    assert state_bytes(memory, "dst") == state_bytes(memory, "src")
    assert memory.export(scope="dst") == memory.export(scope="src")
    # the log and keys came along: skip_written knows what the source had written
    assert memory.write([H1, A1], scope="dst", skip_written=True) == []
    src_before = state_bytes(memory, "src")
    memory.write([H2], scope="dst")
    assert state_bytes(memory, "src") == src_before
    assert memory.stats(scope="src")["segments"] == 2
    assert memory.stats(scope="dst")["segments"] == 3
    assert state_bytes(memory, "dst") == written(memory, [[H1, A1], [H2]])
    dst_before = state_bytes(memory, "dst")
    memory.write([A2], scope="src")
    assert state_bytes(memory, "dst") == dst_before


# --- export / import -----------------------------------------------------------------------
def test_export_import_round_trip_is_bit_exact(memory: DeltaMemory, engine: DeltaMemEngine) -> None:
    memory.write([H1, A1], scope="a")
    memory.write([H2], scope="a")
    data = memory.export(scope="a")
    assert isinstance(data, bytes)
    other = DeltaMemory(engine)
    other.import_(data, scope="copy")
    assert state_bytes(other, "copy") == state_bytes(memory, "a")
    assert other.export(scope="copy") == data
    assert other.stats(scope="copy")["segments"] == 3
    # both continue identically
    memory.write([A2], scope="a")
    other.write([A2], scope="copy")
    assert state_bytes(other, "copy") == state_bytes(memory, "a")
    # the imported log is replayable: forgetting works on it
    other.forget(0, scope="copy")
    assert state_bytes(other, "copy") == written(memory, [[A1], [H2], [A2]])


def _corrupt_exports(data: bytes) -> dict[str, bytes]:
    body = json.loads(data)
    state = base64.b64decode(body["state"])

    def with_(**changes: object) -> bytes:
        return json.dumps({**body, **changes}).encode()

    nan_state = bytearray(state)
    nan_state[-4:] = b"\x00\x00\xc0\x7f"  # the last fp32 value becomes NaN
    return {
        "not json": b"\x00\xffnot json",
        "truncated json": data[: len(data) // 2],
        "not a record": b'{"hello": "world"}',
        "wrong format": with_(format="something/else"),
        "future version": with_(version=99),
        "no state": json.dumps({k: v for k, v in body.items() if k != "state"}).encode(),
        "state not base64": with_(state="%%% not base64 %%%"),
        "truncated state": with_(state=base64.b64encode(state[: len(state) // 2]).decode()),
        "state header garbage": with_(state=base64.b64encode(b"\xff" * 64 + state).decode()),
        "NaN in state": with_(state=base64.b64encode(bytes(nan_state)).decode()),
        "log not a list": with_(log="oops"),
        "log entry missing fields": with_(log=[[{"role": "user"}]]),
        "keys not strings": with_(keys=[1, 2]),
    }


def test_corrupt_exports_are_refused_and_the_scope_untouched(memory: DeltaMemory) -> None:
    memory.write([H1, A1], scope="src")
    data = memory.export(scope="src")
    memory.write([H2], scope="target")
    target = memory.export(scope="target")
    for what, bad in _corrupt_exports(data).items():
        with pytest.raises(MemoryRecordError):
            memory.import_(bad, scope="target")
        assert memory.export(scope="target") == target, what


def test_export_of_another_adapter_is_refused(memory: DeltaMemory, engine: DeltaMemEngine) -> None:
    other_engine = get_engine(adapter="fresh-tsw")  # same backbone, token-granular adapter
    assert other_engine is not engine
    foreign = DeltaMemory(other_engine)
    foreign.write([H1, A1], scope="x")
    memory.write([H2], scope="target")
    target = memory.export(scope="target")
    with pytest.raises(MemoryRecordError, match="adapter"):
        memory.import_(foreign.export(scope="x"), scope="target")
    assert memory.export(scope="target") == target
    # and the other way round
    with pytest.raises(MemoryRecordError, match="adapter"):
        foreign.import_(target, scope="x")
    assert foreign.stats(scope="x")["segments"] == 2


# --- forget --------------------------------------------------------------------------------
def test_forget_replays_the_log_without_the_segment(memory: DeltaMemory) -> None:
    memory.write([H1, A1], scope="f")
    memory.write([H2, A2], scope="f")
    memory.write([H3], scope="f")
    forgotten = memory.forget(2, scope="f")  # H2, the first segment of the second call
    assert forgotten == message_to_dict(H2)
    assert memory.stats(scope="f")["segments"] == 4
    assert state_bytes(memory, "f") == written(memory, [[H1, A1], [A2], [H3]])
    # negative indices count from the end; a call left empty disappears from the log
    assert memory.forget(-1, scope="f") == message_to_dict(H3)
    assert state_bytes(memory, "f") == written(memory, [[H1, A1], [A2]])
    stats = memory.stats(scope="f")
    assert stats["segments"] == 3 and stats["writes_per_state"] == [3]
    # the keys follow the log: what remains is "already written", the forgotten one is not
    assert memory.write([H1, A1, A2], scope="f", skip_written=True) == []
    before = memory.export(scope="f")
    with pytest.raises(IndexError, match="holds 3 segments"):
        memory.forget(3, scope="f")
    with pytest.raises(IndexError):
        memory.forget(-4, scope="f")
    assert memory.export(scope="f") == before


def test_forgetting_everything_gives_the_empty_state(
    memory: DeltaMemory, engine: DeltaMemEngine
) -> None:
    memory.write([H1], scope="f")
    memory.forget(0, scope="f")
    assert state_bytes(memory, "f") == empty_bytes(engine)
    assert memory.stats(scope="f")["segments"] == 0


# --- stats ---------------------------------------------------------------------------------
def test_stats_fields(memory: DeltaMemory, engine: DeltaMemEngine) -> None:
    config = engine.handle.config
    layers = len(engine.handle.layer_ids)
    empty = memory.stats(scope="s")
    assert set(empty) == {
        "scope",
        "segments",
        "writes_per_state",
        "state_bytes",
        "layers",
        "correction_ratio",
    }
    assert empty["scope"] == "s"
    assert empty["segments"] == 0
    assert empty["writes_per_state"] == [0] * config.num_states
    # the default adapter: rank 16, one state per layer
    assert empty["state_bytes"] == layers * config.num_states * config.rank**2 * 4 == 30720
    assert [row["layer"] for row in empty["layers"]] == list(engine.handle.layer_ids)
    assert all(row["norm"] == [0.0] * config.num_states for row in empty["layers"])
    assert empty["correction_ratio"] == {}
    memory.write([H1, A1, H2], scope="s")
    full = memory.stats(scope="s")
    assert full["segments"] == 3
    assert full["writes_per_state"] == [3]
    assert all(row["norm"][0] > 0 for row in full["layers"])
    json.dumps(full)  # plain values only


# --- persistence ---------------------------------------------------------------------------
@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "memory.sqlite"


def _sqlite_store(path: Path) -> BaseStore:
    sqlite_store = pytest.importorskip(
        "langgraph.store.sqlite", reason="langgraph-checkpoint-sqlite is not installed"
    )
    SqliteStore = sqlite_store.SqliteStore

    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    store = SqliteStore(conn)
    store.setup()
    return store


@pytest.fixture(params=["in-memory", "sqlite"])
def store_factory(request, sqlite_path: Path) -> Iterator:
    """Opens the same persistent store again for every call (a new connection for sqlite)."""
    if request.param == "in-memory":
        store = InMemoryStore()
        yield lambda: store
        return
    opened: list = []

    def open_store() -> BaseStore:
        store = _sqlite_store(sqlite_path)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.conn.close()


def test_scopes_persist_in_a_store_across_instances(store_factory, engine: DeltaMemEngine) -> None:
    first = DeltaMemory(engine, store=store_factory())
    first.write([H1, A1], scope="p")
    first.write([H2], scope="p")
    first.write([H3], scope="q")
    second = DeltaMemory(engine, store=store_factory())
    assert second.scopes() == ["p", "q"]
    assert state_bytes(second, "p") == state_bytes(first, "p")
    assert second.export(scope="p") == first.export(scope="p")
    assert second.stats(scope="p")["segments"] == 3
    # the keys persisted too: the new instance knows what is already written
    assert second.write([H1, A1, H2], scope="p", skip_written=True) == []
    # a reset and a forget persist as well
    second.reset(scope="q")
    second.forget(0, scope="p")
    third = DeltaMemory(engine, store=store_factory())
    assert state_bytes(third, "q") == empty_bytes(engine)
    assert state_bytes(third, "p") == written(first, [[A1], [H2]])
    # another namespace is another memory
    elsewhere = DeltaMemory(engine, store=store_factory(), namespace=("other", "ns"))
    assert elsewhere.scopes() == []
    assert elsewhere.stats(scope="p")["segments"] == 0


def test_sqlite_scope_survives_a_new_process(sqlite_path: Path, engine: DeltaMemEngine) -> None:
    store = _sqlite_store(sqlite_path)
    try:
        memory = DeltaMemory(engine, store=store)
        memory.write([H1, A1], scope="proc")
        memory.write([H2], scope="proc")
        expected = hashlib.sha256(state_bytes(memory, "proc")).hexdigest()
        export = hashlib.sha256(memory.export(scope="proc")).hexdigest()
    finally:
        store.conn.close()
    script = textwrap.dedent(
        """
        import hashlib, json, sys
        from langgraph.store.sqlite import SqliteStore
        from langchain_deltamem.memory import DeltaMemory

        with SqliteStore.from_conn_string(sys.argv[1]) as store:
            memory = DeltaMemory(store=store)  # the default engine, loaded in this process
            print(json.dumps({
                "state": hashlib.sha256(memory.state(scope="proc").to_bytes()).hexdigest(),
                "export": hashlib.sha256(memory.export(scope="proc")).hexdigest(),
                "segments": memory.stats(scope="proc")["segments"],
            }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(sqlite_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"state": expected, "export": export, "segments": 3}


def test_corrupt_store_entry_raises_and_is_left_untouched(
    store_factory, engine: DeltaMemEngine
) -> None:
    store = store_factory()
    good = DeltaMemory(engine, store=store)
    good.write([H1], scope="ok")
    record = store.get(DEFAULT_NAMESPACE, "ok").value
    bad_records = {
        "not a record": {"hello": "world"},
        "corrupt state": {**record, "state": base64.b64encode(b"\x01" * 40).decode()},
        "corrupt log": {**record, "log": [["not a message"]]},
    }
    foreign = DeltaMemory(get_engine(adapter="fresh-tsw"))
    foreign.write([H1], scope="x")
    bad_records["another adapter"] = json.loads(foreign.export(scope="x"))
    for name, bad in bad_records.items():
        store.put(DEFAULT_NAMESPACE, name, bad)
    memory = DeltaMemory(engine, store=store_factory())
    for name, bad in bad_records.items():
        with pytest.raises(MemoryRecordError, match=f"store .*{name}"):
            memory.state(scope=name)
        with pytest.raises(MemoryRecordError):  # a write neither loads nor replaces it
            memory.write([H2], scope=name)
        with pytest.raises(MemoryRecordError):  # still refused: no empty scope was cached
            memory.stats(scope=name)
        assert store.get(DEFAULT_NAMESPACE, name).value == bad, name
    # the good scope next to them is unaffected
    assert state_bytes(memory, "ok") == state_bytes(good, "ok")


# --- threads -------------------------------------------------------------------------------
def _turns(scope: int) -> list[list[HumanMessage | AIMessage]]:
    return [
        [HumanMessage(f"Scope {scope}: my number is {scope * 7 + call}."), AIMessage("Noted.")]
        for call in range(2)
    ]


def test_concurrent_writes_to_different_scopes_equal_sequential_writes(
    memory: DeltaMemory,
) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(scope: int) -> None:
        try:
            start.wait(timeout=60)
            for turn in _turns(scope):
                memory.write(turn, scope=f"s{scope}")
                memory.stats(scope=f"s{scope}")  # reads interleave with other scopes' writes
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    for i in range(4):
        assert state_bytes(memory, f"s{i}") == written(memory, _turns(i)), f"scope s{i}"
        assert memory.stats(scope=f"s{i}")["segments"] == 4


def test_calls_on_one_scope_are_serialised(memory: DeltaMemory) -> None:
    memory.write([H1], scope="one")
    finished = threading.Event()

    def write_in_thread() -> None:
        memory.write([H2], scope="one")
        finished.set()

    thread = threading.Thread(target=write_in_thread)
    with memory.held(scope="one") as live:
        held_bytes = live.to_bytes()
        thread.start()
        memory.write([H3], scope="another")  # other scopes are not blocked
        assert not finished.wait(1.0), "a write entered a scope another caller holds"
        assert live.to_bytes() == held_bytes
    thread.join(timeout=120)
    assert finished.is_set()
    assert memory.stats(scope="one")["segments"] == 2
    assert state_bytes(memory, "one") == written(memory, [[H1], [H2]])


def test_concurrent_writes_to_one_scope_equal_some_sequential_order(
    memory: DeltaMemory,
) -> None:
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(turn: list) -> None:
        try:
            start.wait(timeout=60)
            memory.write(turn, scope="shared")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in ([H1, A1], [H2, A2])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert memory.stats(scope="shared")["segments"] == 4
    orders = {written(memory, [[H1, A1], [H2, A2]]), written(memory, [[H2, A2], [H1, A1]])}
    assert state_bytes(memory, "shared") in orders
