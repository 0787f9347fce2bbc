"""The same agent with buffer memory and with δ-mem, side by side: prompt tokens and time.

Buffer memory: the model gets the whole history every turn (what ``MessagesState`` plus a plain
chat model does). δ-mem: `DeltaMemMiddleware` keeps only the last few messages in the prompt
and in the graph state; the rest is written into memory. Both run the embedded SmolLM2 with
the same scripted user turns; the table shows prompt tokens and wall time per turn.

    python examples/replace_buffer_memory.py [--turns 12] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import time

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import get_engine
from langchain_deltamem.memory import DeltaMemory
from langchain_deltamem.middleware import DeltaMemMiddleware

SCRIPT = [
    "Hi! I'm Noor and I just moved to Porto.",
    "I work as a ceramicist; I have a small studio near the river.",
    "My sister Lina visits every second weekend.",
    "I'm training for a half marathon in March.",
    "My favourite dish is arroz de pato.",
    "I adopted a grey cat called Pixel last month.",
    "I'm learning Portuguese on Tuesday evenings.",
    "My studio's kiln broke yesterday, which was annoying.",
    "Lina's birthday is on the 9th of May.",
    "I usually run along the Douro at 7 am.",
    "I'm thinking of selling bowls at the Saturday market.",
    "Where did I say I moved to?",
]


def timed_turn(agent, thread: str, text: str) -> tuple[int, float]:
    """Prompt tokens and seconds of one turn."""
    config = {"configurable": {"thread_id": thread}}
    start = time.perf_counter()
    result = agent.invoke({"messages": [HumanMessage(text)]}, config)
    elapsed = time.perf_counter() - start
    usage = result["messages"][-1].usage_metadata or {}
    return usage.get("input_tokens", 0), elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=len(SCRIPT))
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--window", type=int, default=4, help="δ-mem prompt window (messages)")
    args = parser.parse_args(argv)
    turns = [SCRIPT[i % len(SCRIPT)] for i in range(args.turns)]
    engine = get_engine()

    buffer_model = ChatDeltaMem(
        max_tokens=args.max_tokens,
        window=1_000_000,  # the whole history in the prompt
        write_memory=False,  # and nothing in memory: a plain buffer-memory chat model
        memory=DeltaMemory(engine),
    )
    buffer_agent = create_agent(buffer_model, tools=[], checkpointer=InMemorySaver())

    deltamem_model = ChatDeltaMem(
        max_tokens=args.max_tokens, window=args.window, memory=DeltaMemory(engine)
    )
    deltamem_agent = create_agent(
        deltamem_model,
        tools=[],
        middleware=[DeltaMemMiddleware(deltamem_model, keep_messages=args.window)],
        checkpointer=InMemorySaver(),
    )

    print("| turn | buffer prompt tokens | δ-mem prompt tokens | buffer time | δ-mem time |")
    print("|---|---|---|---|---|")
    for turn, text in enumerate(turns, start=1):  # alternate, so machine noise hits both
        b_tokens, b_time = timed_turn(buffer_agent, "buffer", text)
        d_tokens, d_time = timed_turn(deltamem_agent, "deltamem", text)
        print(f"| {turn} | {b_tokens} | {d_tokens} | {b_time:.2f} s | {d_time:.2f} s |")


if __name__ == "__main__":
    main()
