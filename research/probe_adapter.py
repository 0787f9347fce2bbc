"""The held-out content probe (n episodes, colour/food, NLL and greedy accuracy) on a saved
adapter: ``python research/probe_adapter.py ADAPTER_DIR [--n 200] [--bf16]``."""

from __future__ import annotations

import argparse
import json

from langchain_deltamem.engine import get_engine
from langchain_deltamem.training.probe import content_probe, probe_episodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    engine = get_engine(adapter=args.adapter)
    episodes = probe_episodes(args.n, ("colour", "food"))
    result = content_probe(engine.handle, engine.tokenizer, episodes, bf16=args.bf16, greedy=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
