"""Diagnostic: how much of a written state depends on the episode at all?

Writes held-out 1-fact episodes with an adapter and reports, per layer, the between-episode
variance of the state divided by its mean squared norm. Near 0 means every episode leaves
(almost) the same matrix, so the read path can only learn "a state is present", not what it
holds (docs/results/training.md, session 4).

    python research/state_spread.py ADAPTER [--value-types colour food] [--n 40]
"""

from __future__ import annotations

import argparse

import torch

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import generate_episodes
from langchain_deltamem.training.episodes import between_episode_share
from langchain_deltamem.writing import write_history


def spread(states: list) -> list[float]:
    """Per layer: mean squared distance to the mean state / mean squared norm."""
    return [float(x) for x in between_episode_share(states)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--value-types", nargs="+", default=["colour", "food"])
    args = parser.parse_args()
    engine = get_engine(None, args.adapter)
    episodes = generate_episodes(
        args.n,
        split="heldout",
        seed=3,
        num_facts=[1],
        kinds=["facts"],
        distractors=(0, 0),
        value_types=args.value_types,
    )
    with torch.no_grad():
        states = [write_history(engine.handle, engine.tokenizer, e.history()) for e in episodes]
    fractions = spread(states)
    print("per layer:", " ".join(f"{f:.3f}" for f in fractions))
    print(f"mean over layers: {sum(fractions) / len(fractions):.3f}")


if __name__ == "__main__":
    main()
