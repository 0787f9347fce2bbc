"""Diagnostic: can the write path learn to store content at all, on a fixed set of episodes?

Trains only the write path (key/value projections and gates) of an adapter on the same ``n``
1-fact episodes every step, and tracks the answer NLL with each episode's own state (right)
and with the next episode's state (swapped). If the write path cannot even make right < swapped
on episodes it sees every step, the end-to-end gradient does not reach content (a bug or a
dead path); if it can, the open-pool failure is one of generalisation and data, not plumbing.

    python research/write_overfit.py --adapter runs/ssw-r16-a/adapter-step350 --n 8 --steps 40
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import generate_episodes
from langchain_deltamem.reading import answer_nll
from langchain_deltamem.training.trainer import trainable_parameters
from langchain_deltamem.writing import write_history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train", choices=["write", "all"], default="write")
    parser.add_argument("--value-types", nargs="+", default=None)
    parser.add_argument("--probe-every", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSONL log")
    args = parser.parse_args()
    torch.manual_seed(0)
    engine = get_engine(None, args.adapter)
    handle, tokenizer = engine.handle, engine.tokenizer
    params = trainable_parameters(handle, args.train)
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    episodes = generate_episodes(
        args.n,
        split="train",
        seed=7,
        num_facts=[1],
        kinds=["facts"],
        distractors=(0, 0),
        value_types=args.value_types,
    )
    log = open(args.out, "a") if args.out else None

    def probe(step: int) -> None:
        with torch.no_grad():
            states = [write_history(handle, tokenizer, e.history()) for e in episodes]
            right = [
                float(answer_nll(handle, tokenizer, s, e.question, e.answer)[0])
                for s, e in zip(states, episodes, strict=True)
            ]
            swapped = [
                float(
                    answer_nll(
                        handle, tokenizer, states[(i + 1) % len(states)], e.question, e.answer
                    )[0]
                )
                for i, e in enumerate(episodes)
            ]
        gap = sum(s - r for s, r in zip(swapped, right, strict=True)) / len(right)
        record = {
            "step": step,
            "nll_right": sum(right) / len(right),
            "nll_swapped": sum(swapped) / len(swapped),
            "swapped_minus_right": gap,
        }
        print(json.dumps(record), flush=True)
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()

    print("answers:", [e.answer for e in episodes], flush=True)
    probe(0)
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        total = 0.0
        for episode in episodes:
            state = write_history(
                handle, tokenizer, episode.history(), grad=True, detach_inputs=True
            )
            nll, _ = answer_nll(handle, tokenizer, state, episode.question, episode.answer)
            (nll / len(episodes)).backward()
            total += float(nll)
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        print(
            f"step {step}: nll {total / len(episodes):.3f} grad {float(norm):.3f} "
            f"{time.perf_counter() - start:.1f}s",
            flush=True,
        )
        if step % args.probe_every == 0:
            probe(step)


if __name__ == "__main__":
    main()
