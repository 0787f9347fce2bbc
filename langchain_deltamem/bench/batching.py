"""Throughput of concurrent conversations on one loaded model: batched vs one at a time.

``n`` conversations (``n`` in the curve, default 1, 2, 4, 8, 16), each with its own scope and a
few earlier turns already in memory and in its prompt window, each take ``turns`` more turns
through `ChatDeltaMem` (window 6, ``max_tokens`` per reply, greedy). Three ways, side by side in
one run, each on a fresh `DeltaMemory` holding the same earlier turns:

* **one at a time**: the same turns in one thread, one ``invoke`` after the other (the model's
  batch size set to 1);
* **threads**: one thread per conversation, all started together;
* **asyncio**: one task per conversation (``ainvoke``), gathered.

The clock runs from the first turn to the last turn's write being applied (`DeltaMemory.flush`),
so background writes count. Tokens/s = generated tokens / that time; greedy replies are
token-identical in the three ways (checked), so the same tokens are counted. Per-turn latency
(call to reply) gives p50 and p95. Goal: 8 conversations ≥ 3 × the tokens/s of one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from ..chat_model import ChatDeltaMem
from ..engine import DeltaMemEngine, get_engine
from ..generation import cache_kwargs, output_cache
from ..memory import DeltaMemory
from .cost import conversation

GOAL = 3.0
GOAL_AT = 8
WINDOW = 6
EARLIER_TURNS = 3  # already written and in the window when the measured turns start
EARLIER_REPLY = "Thanks for telling me; I will keep that in mind."
MODES = ("sequential", "threads", "asyncio")


def _scope(c: int) -> str:
    return f"conversation-{c}"


def _setup(engine: DeltaMemEngine, n: int, turns: int) -> tuple[DeltaMemory, list[Any]]:
    """A memory holding each conversation's earlier turns, and per conversation its history
    and the user messages of the measured turns."""
    memory = DeltaMemory(engine)
    plans = []
    for c in range(n):
        users = conversation(EARLIER_TURNS + turns, seed=1000 + c)
        history: list[BaseMessage] = []
        for user in users[:EARLIER_TURNS]:
            history += [HumanMessage(user), AIMessage(EARLIER_REPLY)]
        memory.write(history, scope=_scope(c))
        plans.append({"history": history, "users": users[EARLIER_TURNS:]})
    return memory, plans


def _model(memory: DeltaMemory, max_tokens: int, batch: int) -> ChatDeltaMem:
    return ChatDeltaMem(
        memory=memory, window=WINDOW, max_tokens=max_tokens, temperature=0.0, max_batch_size=batch
    )


def _turns_of(model: ChatDeltaMem, plan: dict, c: int, out: list[dict]) -> Callable[[], None]:
    """The turns of conversation ``c`` one after the other (its own history grows)."""

    def run() -> None:
        history = list(plan["history"])
        config = {"configurable": {"thread_id": _scope(c)}}
        for user in plan["users"]:
            t0 = time.perf_counter()
            reply = model.invoke([*history, HumanMessage(user)], config=config)
            out.append(_record(c, reply, time.perf_counter() - t0))
            history += [HumanMessage(user), AIMessage(str(reply.content))]

    return run


def _record(c: int, reply: AIMessage, seconds: float) -> dict:
    usage = reply.usage_metadata or {}
    return {"c": c, "s": seconds, "out": usage.get("output_tokens", 0), "text": reply.content}


def run_mode(
    engine: DeltaMemEngine, mode: str, n: int, turns: int, max_tokens: int, batch: int
) -> dict[str, Any]:
    """One way of running the ``n`` conversations; returns wall time, tokens and latencies."""
    memory, plans = _setup(engine, n, turns)
    model = _model(memory, max_tokens, 1 if mode == "sequential" else batch)
    records: list[dict] = []
    t0 = time.perf_counter()
    if mode == "sequential":  # turn k of every conversation, then turn k + 1
        histories = [list(p["history"]) for p in plans]
        for k in range(turns):
            for c, plan in enumerate(plans):
                config = {"configurable": {"thread_id": _scope(c)}}
                user = plan["users"][k]
                t1 = time.perf_counter()
                reply = model.invoke([*histories[c], HumanMessage(user)], config=config)
                records.append(_record(c, reply, time.perf_counter() - t1))
                histories[c] += [HumanMessage(user), AIMessage(str(reply.content))]
    elif mode == "threads":
        workers = [
            threading.Thread(target=_turns_of(model, plan, c, records))
            for c, plan in enumerate(plans)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    else:
        asyncio.run(_gather(model, plans, records))
    memory.flush()
    wall = time.perf_counter() - t0
    tokens = sum(r["out"] for r in records)
    latencies = sorted(r["s"] for r in records)
    return {
        "mode": mode,
        "n": n,
        "wall": wall,
        "tokens": tokens,
        "tps": tokens / wall,
        "p50": _percentile(latencies, 50),
        "p95": _percentile(latencies, 95),
        # per conversation in turn order (the sort is stable; each conversation's turns were
        # recorded in order)
        "replies": [r["text"] for r in sorted(records, key=lambda r: r["c"])],
    }


async def _gather(model: ChatDeltaMem, plans: list[dict], records: list[dict]) -> None:
    async def one(c: int, plan: dict) -> None:
        history = list(plan["history"])
        config = {"configurable": {"thread_id": _scope(c)}}
        for user in plan["users"]:
            t0 = time.perf_counter()
            reply = await model.ainvoke([*history, HumanMessage(user)], config=config)
            records.append(_record(c, reply, time.perf_counter() - t0))
            history += [HumanMessage(user), AIMessage(str(reply.content))]

    await asyncio.gather(*(one(c, plan) for c, plan in enumerate(plans)))


def forward_costs(engine: DeltaMemEngine, prompt: int = 200, repeats: int = 3) -> dict:
    """Why batching pays in decoding and not in prefill on a CPU: seconds of one prefill of
    ``prompt`` tokens and of one decode step (on that cache), at batch 1, 8 and 16 (best of
    ``repeats``), reading memory as a turn does."""
    model, handle = engine.model, engine.handle
    out: dict[str, dict[int, float]] = {"prefill": {}, "decode": {}}
    for batch in (1, 8, 16):
        ids = torch.randint(100, 10_000, (batch, prompt))
        state = handle.new_state(batch)
        best_prefill = best_step = float("inf")
        for _ in range(repeats):
            with torch.inference_mode(), handle.memory(state, track_corrections=False):
                t0 = time.perf_counter()
                first = model(input_ids=ids, use_cache=True)
                t1 = time.perf_counter()
                cache = output_cache(first)
                model(input_ids=ids[:, -1:], use_cache=True, **cache_kwargs(model, cache))
                t2 = time.perf_counter()
            best_prefill, best_step = min(best_prefill, t1 - t0), min(best_step, t2 - t1)
        out["prefill"][batch], out["decode"][batch] = best_prefill, best_step
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, -(-len(values) * q // 100))
    return values[int(rank) - 1]


def run(
    sizes: Sequence[int] = (1, 2, 4, 8, 16),
    turns: int = 2,
    max_tokens: int = 64,
    batch: int = 16,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Every size of the curve, the three ways side by side (asyncio at ``GOAL_AT`` only)."""
    log = log or sys.stderr
    engine = get_engine()
    warm, plans = _setup(engine, 1, 1)  # first-call allocations on every path
    _model(warm, 4, batch).invoke(plans[0]["users"][0])
    results: dict[str, Any] = {
        "sizes": list(sizes),
        "turns": turns,
        "max_tokens": max_tokens,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "load_average": [_load_average(), None],
        "rows": [],
    }
    for n in sizes:
        modes = MODES if n == GOAL_AT else MODES[:2]
        for mode in modes:
            row = run_mode(engine, mode, n, turns, max_tokens, batch)
            results["rows"].append(row)
            log.write(
                f"{n} conversation(s), {mode}: {row['tokens']} tokens in {row['wall']:.1f} s = "
                f"{row['tps']:.1f} tok/s, p50 {row['p50']:.2f} s, p95 {row['p95']:.2f} s\n"
            )
            log.flush()
    results["forward_costs"] = forward_costs(engine)
    results["load_average"][1] = _load_average()
    return results


def _load_average() -> float | None:
    try:
        return os.getloadavg()[1]
    except (AttributeError, OSError):
        return None


def report(results: dict[str, Any]) -> str:
    """The markdown report: the goal, the curve, and latency percentiles."""
    rows = {(r["n"], r["mode"]): r for r in results["rows"]}
    load = results["load_average"]
    lines = [
        "# Concurrent conversations: batched vs one at a time",
        "",
        "Command: `python -m langchain_deltamem.bench batching`",
        "",
        f"SmolLM2-135M-Instruct (embedded, fresh adapter), torch {torch.__version__}, "
        f"{results['threads']} thread(s), {platform.machine()}. Each conversation has "
        f"{EARLIER_TURNS} earlier turns in memory and in its window ({WINDOW} messages), then "
        f"takes {results['turns']} turns of {results['max_tokens']} tokens at most (greedy) "
        f"through `ChatDeltaMem` (max batch {results['batch']}). Time runs until the last "
        "turn's memory write is applied. 5-minute load average "
        f"{_fmt(load[0])} at the start, {_fmt(load[1])} at the end ({os.cpu_count()} CPUs, "
        "shared with other jobs).",
        "",
        "| goal | ratio | batched | one at a time | met |",
        "|---|---|---|---|---|",
    ]
    seq = rows.get((GOAL_AT, "sequential"))
    for mode in ("threads", "asyncio"):
        row = rows.get((GOAL_AT, mode))
        if seq is None or row is None:
            continue
        ratio = row["tps"] / seq["tps"]
        lines.append(
            f"| {GOAL_AT} conversations ({mode}) tokens/s ≥ {GOAL}× one at a time | "
            f"{ratio:.2f}× | {row['tps']:.1f} tok/s | {seq['tps']:.1f} tok/s | "
            f"{'yes' if ratio >= GOAL else 'NO'} |"
        )
    lines += [
        "",
        "| conversations | way | tokens | time | tokens/s | ratio | p50 turn | p95 turn | "
        "same replies |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in results["sizes"]:
        base = rows[(n, "sequential")]
        for mode in MODES:
            row = rows.get((n, mode))
            if row is None:
                continue
            same = (
                "—"
                if mode == "sequential"
                else ("yes" if row["replies"] == base["replies"] else "NO")
            )
            lines.append(
                f"| {n} | {mode} | {row['tokens']} | {row['wall']:.1f} s | {row['tps']:.1f} | "
                f"{row['tps'] / base['tps']:.2f}× | {row['p50']:.2f} s | {row['p95']:.2f} s | "
                f"{same} |"
            )
    costs = results.get("forward_costs")
    if costs:
        lines += [
            "",
            "Where the time goes (same run; one forward reading memory, best of 3): a prefill "
            "is compute-bound, so a batch of n prompts costs about n single ones, while a "
            "decode step is bound by reading the weights, so a batch of n steps costs far less "
            "than n single ones. Turns whose prompt (and write) tokens outnumber their reply "
            "tokens gain less from batching.",
            "",
            "| batch | prefill of 200 tokens | per row | decode step | per row |",
            "|---|---|---|---|---|",
        ]
        for batch in sorted(costs["prefill"]):
            p, d = costs["prefill"][batch], costs["decode"][batch]
            lines.append(
                f"| {batch} | {p:.2f} s | {p / batch:.3f} s | {d * 1000:.0f} ms | "
                f"{d * 1000 / batch:.1f} ms |"
            )
    lines.append("")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(
    out: str | None = None,
    sizes: Sequence[int] = (1, 2, 4, 8, 16),
    turns: int = 2,
    max_tokens: int = 64,
) -> None:
    results = run(sizes, turns, max_tokens)
    text = report(results)
    print(text)
    if out:
        Path(out).write_text(text)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem bench batching`` options."""
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--sizes", default="1,2,4,8,16", help="conversation counts of the curve")
    parser.add_argument("--turns", type=int, default=2, help="turns per conversation")
    parser.add_argument("--max-tokens", type=int, default=64, help="per reply")
    return parser


def run_from_args(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    main(out=args.out, sizes=sizes, turns=args.turns, max_tokens=args.max_tokens)
