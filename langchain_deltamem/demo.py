"""The main job on the embedded default: recall from δ-mem, next to the swapped-memory control.

Run with ``make demo`` or ``python -m langchain_deltamem.demo``. ``ChatDeltaMem()`` (the embedded
SmolLM2-135M-Instruct with the packaged trained adapter) writes two short conversations of the
same kind into two memory scopes. The question's prompt holds only the system message and the
question: the conversation reaches the model through the memory state alone. For each scope the
demo prints the reply and the NLL per token of each conversation's stored value, so the effect of
*what* was stored shows beside two controls: the other conversation's memory (same kind, another
value) and an empty memory. The adapter was trained on one-fact conversations about favourite
colours and foods (docs/results/training.md); values here were never seen in training.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch
from langchain_core.messages import HumanMessage, SystemMessage

from .chat_model import ChatDeltaMem
from .reading import answer_nll
from .writing import MEMORY_SYSTEM_PROMPT

CONVERSATIONS = {
    "mara": [
        {"role": "user", "content": "Honestly, roasted pumpkin risotto is my comfort food."},
        {"role": "assistant", "content": "Saved: roasted pumpkin risotto."},
    ],
    "theo": [
        {"role": "user", "content": "Honestly, slow-cooked lentil tagine is my comfort food."},
        {"role": "assistant", "content": "Saved: slow-cooked lentil tagine."},
    ],
}
STORED = {"mara": "roasted pumpkin risotto", "theo": "slow-cooked lentil tagine"}
QUESTION = "What food could I eat every day?"


def run(max_new_tokens: int = 16, adapter: str | None = None) -> dict[str, Any]:
    """Load, write both conversations, ask each scope; returns what was printed, for tests."""
    started = time.perf_counter()
    model = ChatDeltaMem(adapter=adapter, max_tokens=max_new_tokens)
    engine, memory = model.engine, model.get_memory()
    handle, tokenizer = engine.handle, engine.tokenizer
    print(
        f"backbone: SmolLM2-135M-Instruct (embedded); adapter: {engine.adapter} "
        f"({handle.config.strategy}, rank {handle.config.rank}, heads "
        f"{','.join(handle.config.heads)}); loaded in {time.perf_counter() - started:.1f} s"
    )
    for scope, conversation in CONVERSATIONS.items():
        memory.reset(scope=scope)
        memory.write(conversation, scope=scope)
        said = " / ".join(m["content"] for m in conversation)
        print(f"memory {scope!r} ← {said}")

    states = {scope: memory.state(scope=scope) for scope in CONVERSATIONS}
    states["empty"] = handle.new_state()
    nll: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for reader, state in states.items():
            nll[reader] = {
                owner: float(answer_nll(handle, tokenizer, state, QUESTION, value)[0])
                for owner, value in STORED.items()
            }
    replies = {}
    for scope in CONVERSATIONS:
        reply = model.invoke(
            [SystemMessage(MEMORY_SYSTEM_PROMPT), HumanMessage(QUESTION)],
            config={"configurable": {"thread_id": scope}},
        )
        replies[scope] = str(reply.content).strip()
    memory.flush()

    print(f"\nQ (prompt = system message + question only): {QUESTION}")
    for scope in CONVERSATIONS:
        print(f"A, reading memory {scope!r}: {replies[scope]}")
    owners = list(STORED)
    print("\nNLL per token of each stored value (lower = more expected):")
    print(f"{'memory read':>12} " + " ".join(f"{STORED[o]!r:>28}" for o in owners))
    for reader in states:
        print(f"{reader:>12} " + " ".join(f"{nll[reader][o]:>28.3f}" for o in owners))
    gaps = {
        owner: nll[other][owner] - nll[owner][owner]
        for owner in owners
        for other in owners
        if other != owner
    }
    print(
        "\nswapped − right (nats per token; > 0 means the answer depends on what was stored): "
        + ", ".join(f"{owner} {gap:+.3f}" for owner, gap in gaps.items())
    )
    return {"replies": replies, "nll": nll, "swapped_minus_right": gaps}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem demo`` options."""
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--adapter", default=None, help="adapter (default: the packaged one)")
    return parser


def run_from_args(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(args.max_new_tokens, args.adapter)


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()
