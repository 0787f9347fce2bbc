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

from langchain_deltamem.engine import get_engine
from langchain_deltamem.paired_bootstrap import paired_difference
from langchain_deltamem.training.probe import (
    PROBE_SEED,
    greedy_hits,
    probe_episodes,
    write_states,
)


def right_state_hits(adapter: str, episodes: list) -> list[float]:
    """1.0 where the greedy reply with the episode's own memory contains the stored value."""
    engine = get_engine(adapter=adapter)
    states = write_states(engine.handle, engine.tokenizer, episodes)
    return greedy_hits(engine.handle, engine.tokenizer, episodes, states, range(len(episodes)))


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
