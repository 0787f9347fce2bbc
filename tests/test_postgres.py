"""δ-mem on a real PostgreSQL server: `PostgresStore`/`AsyncPostgresStore` behind `DeltaMemory`,
`PostgresSaver`/`AsyncPostgresSaver` behind a δ-mem graph.

The same behaviour as with SQLite, checked bit for bit against a memory without any store:
scopes (per user) persist across instances, connections and a new process; forget, reset and
import/export persist; a graph resumed from a Postgres checkpoint in a new process continues
exactly as an uninterrupted run. Each module gets its own database (`postgres_support`); the
engine is the tiny one on the embedded tokenizer, the same in every process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_worker import build_graph, field_digest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from postgres_support import import_postgres, temporary_database
from reliability_support import build_tiny_engine, register_engine, unregister_engine

from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.memory import DEFAULT_NAMESPACE, DeltaMemory

pytestmark = pytest.mark.slow
psycopg = import_postgres()  # skipped without the postgres extra (a failure in CI)
from langgraph.checkpoint.postgres import PostgresSaver  # noqa: E402
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver  # noqa: E402
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TURN_1 = [
    {"role": "user", "content": "My locker code is 4471."},
    {"role": "assistant", "content": "Noted: locker 4471."},
]
TURN_2 = [{"role": "user", "content": "My cat is called Juniper. Ünïcödé ✓ 🐈"}]
TOOL = [{"role": "tool", "content": "22 °C and sunny", "source": "tool:weather"}]
QUESTIONS = ["My locker code is 4471.", "My cat is called Juniper.", "What is my locker code?"]


@pytest.fixture(scope="module")
def tiny(embedded: Any) -> Iterator[DeltaMemEngine]:
    engine = build_tiny_engine(embedded[1])
    key = register_engine(engine)
    yield engine
    unregister_engine(key)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with temporary_database() as database:
        with PostgresStore.from_conn_string(database) as store:
            store.setup()
        with PostgresSaver.from_conn_string(database) as saver:
            saver.setup()
        yield database


@pytest.fixture(params=["connection", "pool"])
def open_store(request: pytest.FixtureRequest, url: str) -> Iterator[Callable[[], PostgresStore]]:
    """Opens the same database again for every call (a new connection or pool)."""
    opened: list[Any] = []

    def open_one() -> PostgresStore:
        pool = {"min_size": 1, "max_size": 4} if request.param == "pool" else None
        manager = PostgresStore.from_conn_string(url, pool_config=pool)
        opened.append(manager)
        return manager.__enter__()

    yield open_one
    for manager in reversed(opened):
        manager.__exit__(None, None, None)
    with PostgresStore.from_conn_string(url) as store:  # the next test starts empty
        store.conn.execute("DELETE FROM store")


def reference(tiny: DeltaMemEngine, groups: list[list[dict[str, str]]]) -> DeltaMemory:
    """A memory without a store that wrote ``groups`` into scope ``ref``, call by call."""
    memory = DeltaMemory(tiny)
    for group in groups:
        memory.write(group, scope="ref")
    return memory


def same(memory: DeltaMemory, scope: str, ref: DeltaMemory) -> bool:
    """Bit-identical state and log (the export without the scope's name)."""
    return memory.export(scope=scope) == ref.export(scope="ref")


def test_postgres_store_keeps_scopes_like_any_store(
    open_store: Callable[[], PostgresStore], tiny: DeltaMemEngine
) -> None:
    first = DeltaMemory(tiny, store=open_store())
    for group in (TURN_1, TURN_2, TOOL):
        first.write(group, scope="user:alice")
    first.write(TURN_2, scope="user:bob")
    second = DeltaMemory(tiny, store=open_store())  # another connection: another process's view
    assert second.scopes() == ["user:alice", "user:bob"]
    assert same(second, "user:alice", reference(tiny, [TURN_1, TURN_2, TOOL]))
    assert same(second, "user:bob", reference(tiny, [TURN_2]))
    assert second.write([*TURN_1, *TURN_2, *TOOL], scope="user:alice", skip_written=True) == []
    # forget and reset persist, and the first instance sees them on its next call
    assert second.forget(0, scope="user:alice") == TURN_1[0] | {"source": "user"}
    second.reset(scope="user:bob")
    assert same(first, "user:alice", reference(tiny, [TURN_1[1:], TURN_2, TOOL]))
    assert first.stats(scope="user:bob")["segments"] == 0
    # import/export: bytes from a store-less memory land bit for bit, and come back out
    exported = reference(tiny, [TURN_2, TURN_1]).export(scope="ref")
    first.import_(exported, scope="user:carol")
    third = DeltaMemory(tiny, store=open_store())
    assert third.export(scope="user:carol") == exported
    # what is read back is validated like any store entry
    entry = third.store.get(DEFAULT_NAMESPACE, "user:carol").value
    third.store.put(DEFAULT_NAMESPACE, "user:dave", {**entry, "keys": ["f" * 16]})
    with pytest.raises(Exception, match="checksum mismatch"):
        third.state(scope="user:dave")
    # another namespace is another memory
    assert DeltaMemory(tiny, store=open_store(), namespace=("other",)).scopes() == []


def test_text_postgres_cannot_store_is_refused_and_the_scope_kept(
    open_store: Callable[[], PostgresStore], tiny: DeltaMemEngine
) -> None:
    memory = DeltaMemory(tiny, store=open_store())
    memory.write(TURN_1, scope="nul")
    before = memory.export(scope="nul")
    with pytest.raises(psycopg.errors.UntranslatableCharacter):  # jsonb has no \\u0000
        memory.write([{"role": "user", "content": "a\x00b"}], scope="nul")
    assert memory.export(scope="nul") == before
    assert DeltaMemory(tiny, store=open_store()).export(scope="nul") == before


def test_async_postgres_store_and_chat_model(url: str, tiny: DeltaMemEngine) -> None:
    async def run() -> tuple[bytes, bytes, list[str], str]:
        async with AsyncPostgresStore.from_conn_string(url) as store:
            memory = DeltaMemory(tiny, store=store, namespace=("async",))
            await memory.awrite(TURN_1, scope="a")
            await memory.awrite(TURN_2, scope="a")
            await memory.aforget(0, scope="a")
            await memory.aimport_(await memory.aexport(scope="a"), scope="b")
            with pytest.raises(RuntimeError, match="async methods"):
                memory.reset(scope="a")  # a sync change on the store's own loop
            from langchain_deltamem.chat_model import ChatDeltaMem

            model = ChatDeltaMem(
                backbone=tiny.backbone, adapter=tiny.adapter, memory=memory, max_tokens=3
            )
            reply = await model.ainvoke("Hello", config={"configurable": {"thread_id": "c"}})
            await memory.aflush()  # the turn's write-behind, before the store closes
            return (
                await memory.aexport(scope="a"),
                await memory.aexport(scope="b"),
                await memory.ascopes(),
                str(reply.content),
            )

    a, b, scopes, reply = asyncio.run(run())
    expected = reference(tiny, [TURN_1[1:], TURN_2]).export(scope="ref")
    assert a == b == expected
    assert scopes == ["a", "b", "c"]
    with PostgresStore.from_conn_string(url) as store:  # and a sync reader sees the same
        memory = DeltaMemory(tiny, store=store, namespace=("async",))
        assert memory.export(scope="a") == expected
        assert memory.stats(scope="c")["segments"] == 2  # the chat turn and its reply
        assert reply is not None


def _turns(graph: Any, thread: str, questions: list[str]) -> list[str]:
    config = {"configurable": {"thread_id": thread}}
    out = []
    for text in questions:
        graph.invoke({"messages": [HumanMessage(text)]}, config)
        out.append(field_digest(graph.get_state(config).values.get("deltamem")))
    return out


NEW_PROCESS = textwrap.dedent(
    """
    import hashlib, json, sys
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
    import torch
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore
    from crash_worker import build_graph, field_digest
    from reliability_support import build_tiny_engine, register_engine
    from langchain_deltamem.backbones import load_backbone
    from langchain_deltamem.memory import DeltaMemory

    torch.set_num_threads(1)
    engine = build_tiny_engine(load_backbone()[1])
    register_engine(engine)
    url, question = sys.argv[1], sys.argv[3]
    with PostgresStore.from_conn_string(url) as store:
        memory = DeltaMemory(engine, store=store)
        store_export = hashlib.sha256(memory.export(scope="proc")).hexdigest()
    config = {"configurable": {"thread_id": "graph"}}
    with PostgresSaver.from_conn_string(url) as saver:
        graph = build_graph(engine, saver)
        found = field_digest(graph.get_state(config).values.get("deltamem"))
        graph.invoke({"messages": [HumanMessage(question)]}, config)
        after = field_digest(graph.get_state(config).values.get("deltamem"))
    print(json.dumps({"store": store_export, "found": found, "after": after}))
    """
)


def test_store_and_graph_checkpoint_resume_bit_identically_in_a_new_process(
    url: str, tiny: DeltaMemEngine
) -> None:
    with PostgresStore.from_conn_string(url) as store:
        memory = DeltaMemory(tiny, store=store)
        memory.write(TURN_1, scope="proc")
        memory.write(TOOL, scope="proc")
        store_export = hashlib.sha256(memory.export(scope="proc")).hexdigest()
    with PostgresSaver.from_conn_string(url) as saver:
        before = _turns(build_graph(tiny, saver), "graph", QUESTIONS[:2])
    done = subprocess.run(
        [sys.executable, "-c", NEW_PROCESS, url, str(REPO), QUESTIONS[2]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    uninterrupted = _turns(build_graph(tiny, InMemorySaver()), "ref", QUESTIONS)
    assert before == uninterrupted[:2]
    assert seen == {"store": store_export, "found": uninterrupted[1], "after": uninterrupted[2]}


def test_async_postgres_saver_runs_the_graph_like_the_sync_one(
    url: str, tiny: DeltaMemEngine
) -> None:
    async def run() -> list[str]:
        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()
            graph = build_graph(tiny, saver)
            config = {"configurable": {"thread_id": "async-graph"}}
            out = []
            for text in QUESTIONS:
                await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
                state = await graph.aget_state(config)
                out.append(field_digest(state.values.get("deltamem")))
            return out

    assert asyncio.run(run()) == _turns(build_graph(tiny, InMemorySaver()), "ref", QUESTIONS)


def test_scope_locks_and_store_calls_share_one_async_connection_safely(
    url: str, tiny: DeltaMemEngine
) -> None:
    """On one connection, a scope's advisory-lock statements wait for the store's own batch
    (two threads writing two scopes at once; sending both at once fails in psycopg)."""

    async def run() -> list[int]:
        async with AsyncPostgresStore.from_conn_string(url) as store:
            memory = DeltaMemory(tiny, store=store, namespace=("shared-connection",))

            async def turns(scope: str) -> None:
                for _ in range(6):
                    await memory.awrite(TURN_2, scope=scope)
                    await memory.aexport(scope=scope)

            await asyncio.gather(turns("x"), turns("y"), turns("z"))
            return [(await memory.astats(scope=scope))["segments"] for scope in ("x", "y", "z")]

    assert asyncio.run(run()) == [6, 6, 6]
