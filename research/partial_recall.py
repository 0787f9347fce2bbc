"""How much of the stored value a greedy reply holds, right state against a swapped one:
``python research/partial_recall.py ADAPTER [--n 200] [--seed 1235]``.

Exact recall (the whole value in the reply) is strict: "pastel" for *pastel red* is a miss.
This scores each held-out probe episode's greedy reply three ways (the whole value; its first
word; any of its words, as whole words), with the episode's own memory and with a same-type
partner's, per value type and overall, with the paired interval of right − swapped. Prints
one JSON line; ``--replies FILE`` also keeps every right-state reply."""

from __future__ import annotations

import argparse
import json

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import swap_partners
from langchain_deltamem.paired_bootstrap import paired_difference
from langchain_deltamem.reading import is_correct, normalize
from langchain_deltamem.training.probe import (
    PROBE_SEED,
    greedy_replies_of,
    probe_episodes,
    write_states,
)

MEASURES = ("whole_value", "first_word", "any_word")


def scores(reply: str, value: str) -> dict[str, float]:
    """1.0 / 0.0 per measure: the whole value, its first word, any of its words."""
    words, said = normalize(value).split(), set(normalize(reply).split())
    return {
        "whole_value": float(is_correct(reply, value)),
        "first_word": float(bool(words) and words[0] in said),
        "any_word": float(any(w in said for w in words)),
    }


def summary(right: list[dict], swapped: list[dict]) -> dict:
    """Rates right / swapped and the paired interval of right − swapped, per measure."""
    return {
        m: {
            "right": sum(r[m] for r in right) / len(right),
            "swapped": sum(s[m] for s in swapped) / len(swapped),
            "right_minus_swapped": paired_difference(
                [r[m] for r in right], [s[m] for s in swapped]
            ).__dict__,
        }
        for m in MEASURES
    } | {"n": len(right)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=PROBE_SEED + 1, help="held-out episode seed")
    parser.add_argument("--replies", help="write the right-state replies here (JSON lines)")
    args = parser.parse_args()
    episodes = probe_episodes(args.n, ("colour", "food"), seed=args.seed)
    engine = get_engine(adapter=args.adapter)
    states = write_states(engine.handle, engine.tokenizer, episodes)
    partners = swap_partners(episodes)
    replies = {
        name: greedy_replies_of(engine.handle, engine.tokenizer, episodes, states, order)
        for name, order in (("right", range(len(episodes))), ("swapped", partners))
    }
    graded = {
        name: [scores(r, e.answer) for r, e in zip(rs, episodes, strict=True)]
        for name, rs in replies.items()
    }
    result = {"adapter": args.adapter, "episode_seed": args.seed}
    result["all"] = summary(graded["right"], graded["swapped"])
    for kind in sorted({e.meta.get("value_type", "?") for e in episodes}):
        rows = [i for i, e in enumerate(episodes) if e.meta.get("value_type", "?") == kind]
        result[kind] = summary(
            [graded["right"][i] for i in rows],
            [graded["swapped"][i] for i in rows],
        )
    print(json.dumps(result))
    if args.replies:
        with open(args.replies, "w") as out:
            for e, r in zip(episodes, replies["right"], strict=True):
                out.write(json.dumps({"value": e.answer, "reply": r}) + "\n")


if __name__ == "__main__":
    main()
