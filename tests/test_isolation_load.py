"""Isolation under load: many threads and asyncio tasks share one `DeltaMemory`.

8 threads × 32 scopes (and an asyncio run with 256 concurrent tasks) mix writes, reads, held
reads, chat turns, forks (out of the scope, and in from a shared base scope that every worker
forks concurrently), resets and exports. Each scope's operations come from a seed. Afterwards
every scope's operations are replayed one after another on a fresh memory (the "sequential
twin"), and both runs must agree exactly: every observation (read logits, held-state bytes,
chat replies, exports) and the final exported bytes of every scope and fork.

A read of another scope's memory would show up as a different logits digest: each scope writes
text unique to it, and the tiny engine's randomised adapter makes memory visibly change the
logits (checked: in the twin, different states always give different read digests).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from langchain_core.messages import HumanMessage
from reliability_support import (
    digest,
    prompt_ids,
    tensor_digest,
)

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.memory import DeltaMemory

pytestmark = pytest.mark.slow  # the tiny engine uses the embedded tokenizer

THREADS = 8
SCOPES_PER_THREAD = 32
SEED = 7
BASE = "base"  # written before the run, then only forked from (concurrently, by everyone)
OPS = ("write", "write", "read", "held", "chat", "fork-out", "fork-in", "reset", "export")
QUESTION = "What do you remember about me?"


@dataclass
class Plan:
    """One scope's seeded operations (and the text each write uses)."""

    scope: str
    ops: list[str]
    texts: list[str] = field(default_factory=list)


def plans(prefix: str) -> list[list[Plan]]:
    """``THREADS`` lists of ``SCOPES_PER_THREAD`` plans; every scope ends with a read."""
    out = []
    for t in range(THREADS):
        row = []
        for j in range(SCOPES_PER_THREAD):
            rng = random.Random(SEED * 100_003 + t * 1_000 + j)
            scope = f"{prefix}-t{t}-s{j}"
            ops = [rng.choice(OPS) for _ in range(rng.randint(2, 4))] + ["read"]
            texts = [f"{scope} note {k}: my code is {rng.randrange(10**6):06d}." for k in ops]
            row.append(Plan(scope, ops, texts))
        out.append(row)
    return out


class Runner:
    """Executes one operation on a memory and returns what it observed."""

    def __init__(self, memory: DeltaMemory, chat: ChatDeltaMem, engine: DeltaMemEngine) -> None:
        self.memory, self.chat, self.engine = memory, chat, engine
        self.ids = prompt_ids(engine, QUESTION)

    def op(self, plan: Plan, k: int) -> str:
        memory, scope, what = self.memory, plan.scope, plan.ops[k]
        if what == "write":
            turn = [
                {"role": "user", "content": plan.texts[k]},
                {"role": "assistant", "content": f"Noted for {scope}."},
            ]
            return f"write {len(memory.write(turn, scope=scope))}"
        if what == "read":
            with torch.no_grad(), memory.reading(scope=scope):
                return "read " + tensor_digest(self.engine.model(self.ids).logits)
        if what == "held":  # a caller running its own read while holding the scope
            with memory.held(scope=scope) as state, torch.no_grad():
                before = state.to_bytes()
                with self.engine.handle.memory(state):
                    logits = self.engine.model(self.ids).logits
                assert state.to_bytes() == before, "a held state changed during the hold"
                return f"held {digest(before)} {tensor_digest(logits)}"
        if what == "chat":
            reply = self.chat.invoke([HumanMessage(plan.texts[k])], config=_thread(scope))
            return f"chat {reply.content!r}"
        if what == "fork-out":
            fork = f"{scope}/fork"
            memory.fork(scope, fork)
            memory.write([{"role": "user", "content": f"fork of {plan.texts[k]}"}], scope=fork)
            return "fork-out " + digest(memory.export(scope=fork))
        if what == "fork-in":
            memory.fork(BASE, scope)
            return "fork-in"
        if what == "reset":
            memory.reset(scope=scope)
            return "reset"
        return "export " + digest(memory.export(scope=scope))

    async def aop(self, plan: Plan, k: int) -> str:
        """The async variant: chat turns through ``ainvoke``, the rest in worker threads."""
        if plan.ops[k] == "chat":
            reply = await self.chat.ainvoke(
                [HumanMessage(plan.texts[k])], config=_thread(plan.scope)
            )
            return f"chat {reply.content!r}"
        return await asyncio.to_thread(self.op, plan, k)


def _thread(scope: str) -> Any:
    return {"configurable": {"thread_id": scope}}


@pytest.fixture(scope="module")
def engine(tiny_engine: DeltaMemEngine) -> DeltaMemEngine:
    return tiny_engine


@pytest.fixture(scope="module")
def rows() -> list[list[Plan]]:
    return plans("load")


@pytest.fixture(scope="module")
def twin(engine: DeltaMemEngine, rows: list[list[Plan]]) -> dict[str, list[str]]:
    """The sequential run, shared by the thread and the asyncio variants."""
    seen = sequential(engine, rows)
    assert_reads_tell_scopes_apart(seen, rows)
    return seen


def fresh_runner(engine: DeltaMemEngine) -> Runner:
    # Background writes one scope per forward: the twins are compared bit for bit, and a
    # batched write equals a separate one to float rounding only (test_batching checks 1e-5).
    memory = DeltaMemory(engine, write_batch_size=1)
    memory.write(
        [
            {"role": "user", "content": "Shared base: the office opens at 9."},
            {"role": "assistant", "content": "Noted."},
        ],
        scope=BASE,
    )
    chat = ChatDeltaMem(
        backbone=engine.backbone, adapter=engine.adapter, memory=memory, max_tokens=3
    )
    return Runner(memory, chat, engine)


def sequential(engine: DeltaMemEngine, rows: list[list[Plan]]) -> dict[str, list[str]]:
    """The twin: every scope's operations, one scope after another, on a fresh memory."""
    twin = fresh_runner(engine)
    seen = {p.scope: [twin.op(p, k) for k in range(len(p.ops))] for row in rows for p in row}
    for row in rows:
        for p in row:
            seen[p.scope].append(digest(twin.memory.export(scope=p.scope)))
            if "fork-out" in p.ops:
                seen[p.scope].append(digest(twin.memory.export(scope=f"{p.scope}/fork")))
    return seen


def finals(runner: Runner, rows: list[list[Plan]], seen: dict[str, list[str]]) -> None:
    for row in rows:
        for p in row:
            seen[p.scope].append(digest(runner.memory.export(scope=p.scope)))
            if "fork-out" in p.ops:
                seen[p.scope].append(digest(runner.memory.export(scope=f"{p.scope}/fork")))


def assert_same_as_twin(
    concurrent: dict[str, list[str]], twin: dict[str, list[str]], rows: list[list[Plan]]
) -> None:
    differing = [p.scope for row in rows for p in row if concurrent[p.scope] != twin[p.scope]]
    assert not differing, (
        f"{len(differing)} scopes differ from their sequential twin, e.g. {differing[0]}: "
        f"{concurrent[differing[0]]} vs {twin[differing[0]]}"
    )


def assert_reads_tell_scopes_apart(twin: dict[str, list[str]], rows: list[list[Plan]]) -> None:
    """In the twin, the final read (last op) is a function of the final state and distinct
    states give distinct reads, so a read of the wrong scope could not go unnoticed."""
    by_state: dict[str, set[str]] = {}
    for row in rows:
        for p in row:
            final_read, final_state = twin[p.scope][len(p.ops) - 1], twin[p.scope][len(p.ops)]
            by_state.setdefault(final_state, set()).add(final_read)
    assert all(len(reads) == 1 for reads in by_state.values())
    reads = [next(iter(r)) for r in by_state.values()]
    assert len(set(reads)) == len(reads), "two different memories gave the same read"
    # 131 of the 256 final states differ with SEED = 7 (resets and forks of the base repeat)
    assert len(by_state) >= THREADS * SCOPES_PER_THREAD // 4, "too few distinct memories"


def run_threads(runner: Runner, rows: list[list[Plan]]) -> dict[str, list[str]]:
    """Each thread walks its scopes round-robin, one operation per scope per round."""
    seen: dict[str, list[str]] = {p.scope: [] for row in rows for p in row}
    errors: list[BaseException] = []
    start = threading.Barrier(len(rows))

    def work(row: list[Plan]) -> None:
        try:
            start.wait(timeout=60)
            for k in range(max(len(p.ops) for p in row)):
                for p in row:
                    if k < len(p.ops):
                        seen[p.scope].append(runner.op(p, k))
        except BaseException as err:  # re-raised in the test thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(row,)) for row in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    assert not any(thread.is_alive() for thread in threads)
    finals(runner, rows, seen)
    return seen


def test_threads_times_scopes_equal_their_sequential_twins(
    engine: DeltaMemEngine, rows: list[list[Plan]], twin: dict[str, list[str]]
) -> None:
    started = time.perf_counter()
    concurrent = run_threads(fresh_runner(engine), rows)
    assert_same_as_twin(concurrent, twin, rows)
    assert time.perf_counter() - started < 300


async def _run_tasks(runner: Runner, rows: list[list[Plan]]) -> dict[str, list[str]]:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=64))
    seen: dict[str, list[str]] = {}
    gate = asyncio.Event()

    async def scope_task(plan: Plan) -> None:
        await gate.wait()
        seen[plan.scope] = [await runner.aop(plan, k) for k in range(len(plan.ops))]

    tasks = [asyncio.create_task(scope_task(p)) for row in rows for p in row]
    await asyncio.sleep(0)
    gate.set()  # every task starts at once
    await asyncio.gather(*tasks)
    return seen


def test_asyncio_tasks_equal_their_sequential_twins(
    engine: DeltaMemEngine, rows: list[list[Plan]], twin: dict[str, list[str]]
) -> None:
    runner = fresh_runner(engine)
    concurrent = asyncio.run(_run_tasks(runner, rows))
    assert len(concurrent) == THREADS * SCOPES_PER_THREAD
    finals(runner, rows, concurrent)
    assert_same_as_twin(concurrent, twin, rows)


def test_the_twin_comparison_catches_a_crossed_read(engine: DeltaMemEngine) -> None:
    """A read served from another scope's state is reported, and only that read differs
    (the oracle can fail, and on the read itself: reads that ignored memory would not)."""
    texts = ["cross-a note: code 111111.", "", "", ""]
    rows = [[Plan("cross-a", ["write", "read", "read", "read"], texts)]]
    rows.append([Plan("cross-b", ["write"], ["cross-b note: code 222222."])])
    runner = fresh_runner(engine)
    seen: dict[str, list[str]] = {"cross-a": [], "cross-b": []}
    seen["cross-a"] += [runner.op(rows[0][0], 0), runner.op(rows[0][0], 1)]
    seen["cross-b"].append(runner.op(rows[1][0], 0))
    record = runner.memory._scopes  # the internal table: cross the two scopes' states

    def swap() -> None:
        record["cross-a"].state, record["cross-b"].state = (
            record["cross-b"].state,
            record["cross-a"].state,
        )

    swap()
    seen["cross-a"].append(runner.op(rows[0][0], 2))  # the crossed read
    swap()  # back: the later read and the final exports are the scopes' own again
    seen["cross-a"].append(runner.op(rows[0][0], 3))
    finals(runner, rows, seen)
    twin = sequential(engine, rows)
    assert seen["cross-a"][2].startswith("read ") and seen["cross-a"][2] != twin["cross-a"][2]

    def besides_crossed(obs: dict[str, list[str]]) -> dict[str, list[str]]:
        return {s: [o for k, o in enumerate(v) if (s, k) != ("cross-a", 2)] for s, v in obs.items()}

    assert besides_crossed(seen) == besides_crossed(twin), "not only the crossed read differs"
    with pytest.raises(AssertionError, match="differ from their sequential twin"):
        assert_same_as_twin(seen, twin, rows)
