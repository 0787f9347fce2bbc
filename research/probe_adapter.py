"""The held-out content probe (n episodes, colour/food, NLL and greedy accuracy) on a saved
adapter: ``python research/probe_adapter.py ADAPTER_DIR [--n 200] [--bf16]
[--answer-form "You told me it's {answer}."] [--seed S]``.

With ``--answer-form`` the NLLs (and those of the value's first token, ``value_start``, and of
its later tokens, ``value_rest``) are also measured with the answers phrased as the run trained
them (``in_answer_form``), as the trainer's own probe does. ``--seed`` draws another held-out
set than the trainer's (1235): a run's probe picks its best step on that one set, which
flatters the step; measure the chosen adapter again on episodes no step was chosen on."""

from __future__ import annotations

import argparse
import json

from langchain_deltamem.engine import get_engine
from langchain_deltamem.training.probe import PROBE_SEED, content_probe, probe_episodes
from langchain_deltamem.training.run import parse_answer_form
from langchain_deltamem.training.trainer import BARE_ANSWER, in_answer_form


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--answer-form", type=parse_answer_form, default=BARE_ANSWER)
    parser.add_argument("--seed", type=int, default=PROBE_SEED + 1, help="held-out episode seed")
    parser.add_argument("--no-greedy", action="store_true", help="NLLs only (faster)")
    args = parser.parse_args()
    engine = get_engine(adapter=args.adapter)
    episodes = probe_episodes(args.n, ("colour", "food"), seed=args.seed)
    result = content_probe(
        engine.handle, engine.tokenizer, episodes, bf16=args.bf16, greedy=not args.no_greedy
    )
    if args.answer_form != BARE_ANSWER:
        phrased = [in_answer_form(e, args.answer_form) for e in episodes]
        result["in_answer_form"] = content_probe(
            engine.handle, engine.tokenizer, phrased, bf16=args.bf16
        )
    print(json.dumps({"episode_seed": args.seed, **result}))


if __name__ == "__main__":
    main()
