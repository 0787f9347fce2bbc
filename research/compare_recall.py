"""Greedy recall of two adapters on the same held-out episodes, paired:
``python research/compare_recall.py ADAPTER_A ADAPTER_B [--n 200] [--seed 1235]``.

Each adapter writes every episode's history into its own state and answers the question
greedily (16 new tokens); a hit is the whole stored value in the reply. Prints both accuracies
and the paired interval of A − B: whether a training change (e.g. a loss weight) made an
adapter recall more often than its control, on the episodes both saw. ``--seed`` draws another
held-out set than the trainer's probe (whose episodes are ``--seed 1235``)."""

from __future__ import annotations

import argparse
import json

import torch

from langchain_deltamem.engine import get_engine
from langchain_deltamem.paired_bootstrap import paired_difference
from langchain_deltamem.reading import is_correct, question_ids
from langchain_deltamem.training import batched
from langchain_deltamem.training.probe import PROBE_SEED, probe_episodes
from langchain_deltamem.writing import MEMORY_SYSTEM_PROMPT


def right_state_hits(adapter: str, episodes: list, batch_size: int = 50) -> list[float]:
    """1.0 where the greedy reply with the episode's own memory contains the stored value."""
    engine = get_engine(adapter=adapter)
    hits: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(episodes), batch_size):
            chunk = episodes[start : start + batch_size]
            state = batched.write_histories(
                engine.handle,
                engine.tokenizer,
                [e.history() for e in chunk],
                system_prompt=MEMORY_SYSTEM_PROMPT,
            )
            prompts = [
                question_ids(engine.tokenizer, e.question, MEMORY_SYSTEM_PROMPT)[0] for e in chunk
            ]
            replies = batched.greedy_replies(engine.handle, engine.tokenizer, prompts, state)
            hits += [float(is_correct(r, e.answer)) for r, e in zip(replies, chunk, strict=True)]
    return hits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter_a")
    parser.add_argument("adapter_b")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=PROBE_SEED + 1)
    args = parser.parse_args()
    episodes = probe_episodes(args.n, ("colour", "food"), seed=args.seed)
    a = right_state_hits(args.adapter_a, episodes)
    b = right_state_hits(args.adapter_b, episodes)
    print(
        json.dumps(
            {
                "n": args.n,
                "episode_seed": args.seed,
                "a": args.adapter_a,
                "b": args.adapter_b,
                "accuracy_a": sum(a) / len(a),
                "accuracy_b": sum(b) / len(b),
                "a_minus_b": paired_difference(a, b).__dict__,
            }
        )
    )


if __name__ == "__main__":
    main()
