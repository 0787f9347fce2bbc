"""Child side of ``test_crash_safety``: a zygote that loads once, then forks writer processes.

Run as ``python tests/crash_worker.py``. The zygote imports everything and builds the tiny
engine once (about ten seconds), then answers commands on stdin, one per line:

* ``fork store|graph|turns <db> <log> <seed>`` → ``pid <n>``: a writer process, forked;
* ``poll <pid>`` → ``alive`` or ``status <waitpid status>``; ``wait <pid>`` → ``status <...>``.

Forking keeps each restart to milliseconds, so a test can kill and restart many times. A writer
opens the database itself (nothing SQLite crosses the fork), logs what it finds (``start``), then
writes memory forever, logging one line each, unbuffered: ``before <sha>``; ``intend <sha>``, the
record the write will store, computed first on an unpersisted shadow copy; ``after <sha>``. Inside
each SQLite transaction it logs ``phase <statement>`` and sleeps a few milliseconds, so random
kills often land mid-transaction. The graph writer logs ``before``/``intend`` from inside its
node (from the very input the graph hands it). Only SIGKILL ends it; a mismatch exits with 3.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCOPE = "crash"
OTHER = "crash-other"  # forked into SCOPE now and then (written once, never killed during)
MISMATCH_EXIT = 3


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def record_digest(value: dict[str, Any] | None) -> str:
    """Digest of a store entry as `DeltaMemory.export` renders it."""
    return "none" if value is None else digest(json.dumps(value, sort_keys=True).encode())


def field_digest(field: Any) -> str:
    """Digest of the graph's ``deltamem`` field (bytes shown as hex)."""
    if field is None:
        return "none"
    plain = {k: v.hex() if isinstance(v, bytes) else v for k, v in dict(field).items()}
    return digest(json.dumps(plain, sort_keys=True).encode())


def _logger(path: str) -> Callable[[str], None]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def say(line: str) -> None:
        os.write(fd, (line + "\n").encode())  # one write(2): whole lines survive a SIGKILL

    return say


def _slow_transactions(conn: sqlite3.Connection, say: Callable[[str], None], rng: Any) -> None:
    """Log and linger at each write statement and each COMMIT of a transaction that wrote
    (the transaction is open); the reads a change makes first are not logged."""

    wrote = [False]  # whether the open transaction wrote (a read's COMMIT is not a write's)

    def trace(statement: str) -> None:
        head = " ".join(statement.split()[:3])
        if head.startswith("BEGIN"):
            wrote[0] = False
        if head.startswith("INSERT"):
            wrote[0] = True
        if head.startswith("INSERT") or (head.startswith("COMMIT") and wrote[0]):
            say(f"phase {head}")
            time.sleep(rng.uniform(0.005, 0.03))

    conn.set_trace_callback(trace)


def run_store_writer(engine: Any, db: str, log: str, seed: int) -> None:
    from langgraph.store.sqlite import SqliteStore

    from langchain_deltamem.memory import DeltaMemory

    say, rng = _logger(log), random.Random(seed)
    conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    store = SqliteStore(conn)
    store.setup()
    memory, shadow = DeltaMemory(engine, store=store), DeltaMemory(engine)
    if store.get(memory.namespace, OTHER) is None:  # the first writer: stored before "start"
        memory.write([{"role": "user", "content": "The other scope's one note."}], scope=OTHER)
        memory.reset(scope=SCOPE)
    current = memory.export(scope=SCOPE)  # loads what the last (killed) writer left
    say(f"start {digest(current)}")
    shadow.import_(current, scope=SCOPE)
    shadow.import_(memory.export(scope=OTHER), scope=OTHER)
    _slow_transactions(conn, say, rng)
    for step in range(10**9):
        op = rng.choice(["write"] * 6 + ["reset", "forget", "fork-in"])
        if op == "forget" and not json.loads(shadow.export(scope=SCOPE))["log"]:
            op = "write"
        text = f"writer {os.getpid()} step {step}: my code is {rng.randrange(10**6):06d}. " * 3
        say(f"before {digest(memory.export(scope=SCOPE))} {op}")
        for target in (shadow, memory):  # the shadow first: its result is the intention
            if op == "write":
                target.write(
                    [{"role": "user", "content": text}, {"role": "assistant", "content": "Ok."}],
                    scope=SCOPE,
                )
            elif op == "reset":
                target.reset(scope=SCOPE)
            elif op == "forget":
                target.forget(0, scope=SCOPE)
            else:
                target.fork(OTHER, SCOPE)
            if target is shadow:
                intended = digest(shadow.export(scope=SCOPE))
                say(f"intend {intended}")
        after = digest(memory.export(scope=SCOPE))
        if after != intended:
            say(f"MISMATCH {after} != {intended}")
            os._exit(MISMATCH_EXIT)
        say(f"after {after}")


def run_turn_writer(engine: Any, db: str, log: str, seed: int) -> None:
    """Chat turns with the write off the reply's path: after each reply (logged ``replied``)
    the turn is only pending in the store; the background writer is held back (it waits
    ``write_wait`` for more scopes) until the next export applies it. ``intend`` is the record
    after the turn, from a twin chat model on an unpersisted memory written in line."""
    from langgraph.store.sqlite import SqliteStore

    from langchain_deltamem.chat_model import ChatDeltaMem
    from langchain_deltamem.memory import DeltaMemory

    say, rng = _logger(log), random.Random(seed)
    conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    store = SqliteStore(conn)
    store.setup()
    memory, shadow = DeltaMemory(engine, store=store, write_wait=10.0), DeltaMemory(engine)
    current = memory.export(scope=SCOPE)  # applies what a killed writer left pending
    say(f"start {digest(current)}")
    shadow.import_(current, scope=SCOPE)
    params = {"backbone": engine.backbone, "adapter": engine.adapter, "max_tokens": 3}
    model = ChatDeltaMem(memory=memory, **params)
    twin = ChatDeltaMem(memory=shadow, **params)
    config = {"configurable": {"thread_id": SCOPE}}
    _slow_transactions(conn, say, rng)
    for step in range(10**9):
        text = f"writer {os.getpid()} turn {step}: my code is {rng.randrange(10**6):06d}."
        say(f"before {digest(memory.export(scope=SCOPE))} turn")
        expected = twin.invoke(text, config).content
        shadow.flush()
        intended = digest(shadow.export(scope=SCOPE))
        say(f"intend {intended}")
        reply = model.invoke(text, config).content
        say(f"replied {memory.pending_writes(scope=SCOPE)}")
        if reply != expected:
            say(f"MISMATCH reply {reply!r} != {expected!r}")
            os._exit(MISMATCH_EXIT)
        time.sleep(rng.uniform(0.0, 0.05))
        after = digest(memory.export(scope=SCOPE))
        if after != intended:
            say(f"MISMATCH {after} != {intended}")
            os._exit(MISMATCH_EXIT)
        say(f"after {after}")


def build_graph(
    engine: Any, checkpointer: Any, before_node: Callable[..., None] | None = None
) -> Any:
    """A one-node δ-mem graph on ``checkpointer``; ``before_node(state, config, shadow)`` runs
    first in the node, with an unpersisted copy of the node (``shadow``) to predict its result
    from exactly the input the graph hands it."""
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import END, START, StateGraph

    from langchain_deltamem.chat_model import ChatDeltaMem
    from langchain_deltamem.graph import DeltaMemState, GraphMemory, agent_node
    from langchain_deltamem.memory import DeltaMemory

    def node() -> Callable[..., Any]:
        model = ChatDeltaMem(
            backbone=engine.backbone,
            adapter=engine.adapter,
            memory=DeltaMemory(engine),
            max_tokens=3,
        )
        return agent_node(GraphMemory(model, keep_messages=4))

    real, shadow = node(), node()

    def agent(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        if before_node is not None:
            before_node(state, config, shadow)
        return real(state, config)

    graph = StateGraph(DeltaMemState)
    graph.add_node("agent", agent)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", END)
    return graph.compile(checkpointer=checkpointer)


def run_graph_writer(engine: Any, db: str, log: str, seed: int) -> None:
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.sqlite import SqliteSaver

    say, rng = _logger(log), random.Random(seed)
    intended: list[str] = []

    def predict(state: dict[str, Any], config: Any, shadow: Callable[..., Any]) -> None:
        say(f"before {field_digest(state.get('deltamem'))} node")
        intended.append(field_digest(shadow(state, config)["deltamem"]))
        say(f"intend {intended[-1]}")

    conn = sqlite3.connect(db, check_same_thread=False)
    saver = SqliteSaver(conn)
    graph = build_graph(engine, saver, predict)
    config = {"configurable": {"thread_id": SCOPE}}
    # What a restart finds: the graph's view, the checkpoint's field and its pending writes
    # (a run killed mid-step leaves some; LangGraph's view and resumption differ on them).
    stored = saver.get_tuple(config)
    found = [field_digest(graph.get_state(config).values.get("deltamem"))]
    if stored is not None:
        found.append(field_digest(stored.checkpoint["channel_values"].get("deltamem")))
        found += [field_digest(v) for _, ch, v in stored.pending_writes or [] if ch == "deltamem"]
    say("start " + " ".join(found))
    _slow_transactions(conn, say, rng)
    for step in range(10**9):
        text = f"writer {os.getpid()} turn {step}: my code is {rng.randrange(10**6):06d}."
        say("turn")
        graph.invoke({"messages": [HumanMessage(text, id=str(uuid.uuid4()))]}, config)
        after = field_digest(graph.get_state(config).values.get("deltamem"))
        if after != intended[-1]:
            say(f"MISMATCH {after} != {intended[-1]}")
            os._exit(MISMATCH_EXIT)
        say(f"after {after}")


def zygote() -> None:
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout's package, not an installed one
    import torch
    from reliability_support import build_tiny_engine, register_engine

    from langchain_deltamem.backbones import load_backbone

    torch.set_num_threads(1)
    engine = build_tiny_engine(load_backbone()[1])
    register_engine(engine)
    writers = {"store": run_store_writer, "graph": run_graph_writer, "turns": run_turn_writer}
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "fork":
            kind, db, log, seed = args
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:  # the writer: never returns
                try:
                    writers[kind](engine, db, log, int(seed))
                except BaseException as err:
                    _logger(log)(f"ERROR {type(err).__name__}: {err}")
                finally:
                    os._exit(1)
            print(f"pid {pid}", flush=True)
        elif command == "poll":
            done, status = os.waitpid(int(args[0]), os.WNOHANG)
            print("alive" if done == 0 else f"status {status}", flush=True)
        elif command == "wait":
            print(f"status {os.waitpid(int(args[0]), 0)[1]}", flush=True)


if __name__ == "__main__":
    zygote()
