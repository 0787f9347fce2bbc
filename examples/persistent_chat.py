"""A chat whose δ-mem memory survives a restart: a hand-built `StateGraph` on `SqliteSaver`.

Each run of this script is one turn in a new process. The memory of the thread lives in the
graph state (``deltamem``: a fixed-size snapshot, stored by the checkpointer without pickle),
so the next process resumes with exactly the memory the last one left; the script prints a
hash of it before and after the turn to show that. ``--history`` lists the checkpoints with
the memory as it was at each step.

    python examples/persistent_chat.py --db chat.sqlite "My cat is called Juniper."
    python examples/persistent_chat.py --db chat.sqlite "What is my cat called?"
    python examples/persistent_chat.py --db chat.sqlite --history
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.graph import DeltaMemState, GraphMemory, agent_node


def memory_hash(values: dict[str, Any]) -> str:
    """Short hash of the thread's memory snapshot (``-`` before the first turn)."""
    snapshot = values.get("deltamem")
    return hashlib.sha256(snapshot["state"]).hexdigest()[:16] if snapshot else "-"


def build_graph(checkpointer: SqliteSaver, max_tokens: int, keep: int) -> Any:
    model = ChatDeltaMem(max_tokens=max_tokens)
    memory = GraphMemory(model, keep_messages=keep)
    graph = StateGraph(DeltaMemState)
    graph.add_node("agent", agent_node(memory))
    graph.add_edge(START, "agent")
    return graph.compile(checkpointer=checkpointer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="?", help="the user's message for this turn")
    parser.add_argument("--db", default="persistent_chat.sqlite")
    parser.add_argument("--thread", default="persistent-chat")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--keep", type=int, default=6, help="messages kept in the graph state")
    parser.add_argument("--history", action="store_true", help="list the thread's checkpoints")
    args = parser.parse_args(argv)
    if not args.message and not args.history:
        parser.error("give a message, or --history")

    with sqlite3.connect(args.db, check_same_thread=False) as connection:
        app = build_graph(SqliteSaver(connection), args.max_tokens, args.keep)
        config = {"configurable": {"thread_id": args.thread}}
        if args.history:
            for snapshot in app.get_state_history(config):
                step = snapshot.metadata.get("step") if snapshot.metadata else None
                print(
                    f"step {step}: {len(snapshot.values.get('messages', []))} messages, "
                    f"memory {memory_hash(snapshot.values)}"
                )
            return
        before = app.get_state(config).values
        print(f"memory before: {memory_hash(before)}")
        result = app.invoke({"messages": [HumanMessage(args.message)]}, config)
        print(f"assistant: {result['messages'][-1].content}")
        print(f"memory after: {memory_hash(result)}")
        print(
            f"graph state: {len(result['messages'])} messages, "
            f"snapshot {len(result['deltamem']['state']):,} bytes"
        )


if __name__ == "__main__":
    main()
