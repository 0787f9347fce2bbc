"""Where greedy recall fails: the value's tokens scored after a lead-in phrase.

For each lead-in (``""`` = the bare value right after the assistant header), on held-out
one-fact colour/food episodes: the value's mean NLL and its first token's NLL and top-1 rate
with the right state, a same-type swapped state, an empty state and the bare backbone with the
whole history in its prompt (the teacher), plus the lead-in's own NLL and per-token top-1 rate
(can greedy decoding produce it?). A lead-in after which the teacher predicts the value's first
token is a trainable answer form (``deltamem train --answer-form``).

    python research/answer_leadin.py ADAPTER [--n 80] [--lead-in "" "You told me it's" ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import swap_partners
from langchain_deltamem.reading import question_ids
from langchain_deltamem.training import batched
from langchain_deltamem.training.probe import probe_episodes


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def _first_of_rows(batch: batched.ScoredBatch) -> torch.Tensor:
    return torch.tensor([int((batch.row_of == b).nonzero()[0]) for b in range(batch.rows)])


def score(handle, tokenizer, prompts, lead: str, values, state) -> dict[str, float | None]:
    """The value after ``lead`` (teacher-forced) and the lead-in itself, read with ``state``."""
    lead_ids = _ids(tokenizer, lead)
    batch = batched.score_batch(tokenizer, [torch.cat([p, lead_ids]) for p in prompts], values)
    logits = batched.scored_logits(handle, batch, state)
    nll = F.cross_entropy(logits, batch.targets, reduction="none")
    first = _first_of_rows(batch)
    out: dict[str, float | None] = {
        "value_nll": float(batched.per_row_mean(nll, batch).mean()),
        "first_nll": float(nll[first].mean()),
        "first_top1": float((logits[first].argmax(1) == batch.targets[first]).float().mean()),
        "lead_nll": None,
        "lead_top1": None,
    }
    if len(lead_ids):
        lead_batch = batched.score_batch(tokenizer, prompts, [lead_ids] * len(prompts))
        lead_logits = batched.scored_logits(handle, lead_batch, state)
        out["lead_nll"] = float(F.cross_entropy(lead_logits, lead_batch.targets).mean())
        out["lead_top1"] = float((lead_logits.argmax(1) == lead_batch.targets).float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--lead-in", nargs="+", default=["", "You told me it's", "It's"])
    args = parser.parse_args()
    engine = get_engine(adapter=args.adapter)
    handle, tokenizer = engine.handle, engine.tokenizer
    episodes = probe_episodes(args.n, ("colour", "food"))
    partners = swap_partners(episodes)
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        states = batched.write_histories(handle, tokenizer, [e.history() for e in episodes])
        alone = [question_ids(tokenizer, e.question)[0] for e in episodes]
        full = []
        for e in episodes:
            one = batched.history_batch(tokenizer, [e.history()], [e.question], [e.answer])
            full.append(one.input_ids[0, : int(one.positions[0, 1]) + 1])
        for lead in args.lead_in:
            start = time.time()
            values = [
                torch.cat(
                    [_ids(tokenizer, f" {e.answer}" if lead else e.answer), torch.tensor([eos])]
                )
                for e in episodes
            ]
            conditions = {
                "right": (alone, states),
                "swapped": (alone, batched.permuted(states, partners)),
                "zero": (alone, handle.new_state(len(episodes))),
                "full_history": (full, None),
            }
            row = {
                name: score(handle, tokenizer, prompts, lead, values, state)
                for name, (prompts, state) in conditions.items()
            }
            print(json.dumps({"lead_in": lead, **row, "seconds": time.time() - start}), flush=True)


if __name__ == "__main__":
    main()
