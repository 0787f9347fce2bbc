"""The held-out content probe (n episodes, colour/food, NLL and greedy accuracy) on a saved
adapter: ``python research/probe_adapter.py ADAPTER_DIR [--n 200] [--bf16]
[--answer-form "You told me it's {answer}."] [--seed S]``.

With ``--answer-form`` the NLLs (and those of the value's first token, ``value_start``, and of
its later tokens, ``value_rest``) are also measured with the answers phrased as the run trained
them (``in_answer_form``), as the trainer's own probe does. ``--seed`` draws another held-out
set than the trainer's (1235): a run's probe picks its best step on that one set, which
flatters the step; measure the chosen adapter again on episodes no step was chosen on.
``--teacher`` adds the bare backbone with the whole history in its prompt (what the memory
replaces): its NLL per answer token, on the value's first token and on its later tokens."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import Episode
from langchain_deltamem.training import batched
from langchain_deltamem.training.probe import (
    PROBE_SEED,
    content_probe,
    probe_episodes,
    value_indices,
)
from langchain_deltamem.training.run import parse_answer_form
from langchain_deltamem.training.trainer import BARE_ANSWER, in_answer_form


def teacher_nlls(engine, episodes: Sequence[Episode], bf16: bool) -> dict[str, float]:
    """Mean NLL of the full-history backbone: per answer token, first value token, later ones."""
    answer, first, rest = [], [], []
    with torch.inference_mode():
        for start in range(0, len(episodes), 50):
            chunk = episodes[start : start + 50]
            full = batched.history_batch(
                engine.tokenizer,
                [e.history() for e in chunk],
                [e.question for e in chunk],
                [e.answer for e in chunk],
            )
            nll = batched.token_nlls(engine.handle, full, None, bf16=bf16)
            answer += batched.per_row_mean(nll, full).tolist()
            firsts, rests = value_indices(engine.tokenizer, chunk, full)
            first += [float(nll[i]) for i in firsts.tolist() if i >= 0]
            rest += [float(nll[indices].mean()) for indices in rests if len(indices)]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {"nll": mean(answer), "value_start": mean(first), "value_rest": mean(rest)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--answer-form", type=parse_answer_form, default=BARE_ANSWER)
    parser.add_argument("--seed", type=int, default=PROBE_SEED + 1, help="held-out episode seed")
    parser.add_argument("--no-greedy", action="store_true", help="NLLs only (faster)")
    parser.add_argument("--teacher", action="store_true", help="add the full-history backbone")
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
        if args.teacher:
            result["in_answer_form"]["teacher"] = teacher_nlls(engine, phrased, args.bf16)
    if args.teacher:
        result["teacher"] = teacher_nlls(engine, episodes, args.bf16)
    print(json.dumps({"episode_seed": args.seed, **result}))


if __name__ == "__main__":
    main()
