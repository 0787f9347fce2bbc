"""Diagnostic: can the read path carry an answer at all? Optimise the state directly.

For held-out 1-fact episodes, the memory state (every layer's r×r matrix) is treated as free
parameters and optimised by gradient descent to minimise the answer's NLL given only the
memory system prompt and the question. If even a directly optimised state cannot make the
frozen model produce an unseen value, no write rule can: the read path (rank, correction
heads, scale) is the bottleneck. If it can, the bottleneck is learning to write.

    python research/state_capacity.py --adapter fresh --n 8 --steps 60
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import generate_episodes
from langchain_deltamem.generation import GenerationSettings, generate
from langchain_deltamem.reading import answer_nll, is_correct, question_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", default="fresh")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument(
        "--rank1",
        action="store_true",
        help="each layer's state is v kᵀ (what one segment write leaves), not a free matrix",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    engine = get_engine(None, args.adapter)
    handle, tokenizer = engine.handle, engine.tokenizer
    episodes = generate_episodes(
        args.n, split="heldout", seed=args.seed, num_facts=[1], kinds=["facts"]
    )
    settings = GenerationSettings(max_tokens=16, temperature=0.0)
    for episode in episodes:
        state = handle.new_state()
        if args.rank1:
            shapes = [t.shape for t in state.layers]  # [B, H, r, r]
            vs = [torch.zeros(*s[:-1], 1, requires_grad=True) for s in shapes]
            ks = [(0.1 * torch.randn(*s[:-2], 1, s[-1])).requires_grad_() for s in shapes]
            optimiser = torch.optim.Adam([*vs, *ks], lr=args.lr)

            def build(vs=vs, ks=ks) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
                return [v @ k for v, k in zip(vs, ks, strict=True)]
        else:
            free = [torch.zeros_like(t, requires_grad=True) for t in state.layers]
            optimiser = torch.optim.Adam(free, lr=args.lr)

            def build(free=free) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
                return list(free)

        t0 = time.perf_counter()
        first = None
        for _ in range(args.steps):
            state.layers = build()
            nll, _ = answer_nll(handle, tokenizer, state, episode.question, episode.answer)
            first = float(nll.detach()) if first is None else first
            optimiser.zero_grad()
            nll.backward()
            optimiser.step()
        params = [p.detach() for p in build()]
        state.layers = params
        with torch.no_grad():
            final, _ = answer_nll(handle, tokenizer, state, episode.question, episode.answer)
            fixed = handle.new_state()
            fixed.layers = [p.clone() for p in params]
            ids = question_ids(tokenizer, episode.question)
            with torch.inference_mode():
                reply = generate(
                    engine.model,
                    tokenizer,
                    ids,
                    settings,
                    memory=handle.memory(fixed, track_corrections=False),
                ).text
        norms = [float(p.norm()) for p in params]
        print(
            json.dumps(
                {
                    "answer": episode.answer,
                    "type": episode.meta["value_type"],
                    "nll_start": round(first, 3),
                    "nll_end": round(float(final), 3),
                    "reply": reply,
                    "correct": is_correct(reply, episode.answer),
                    "state_norm_max": round(max(norms), 2),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
