"""Does amplifying what memory changes turn the NLL gap into greedy recall? (memory guidance)

The shipped adapter lowers the stored value's NLL by ~0.5 nats per token against a swapped
state, yet greedy replies never contain it. Guidance in the manner of classifier-free guidance
reads every position twice, with the conversation's state and with an empty one (= the bare
backbone), and decodes from ``empty + γ · (memory − empty)``: γ = 1 is the plain read, γ > 1
amplifies whatever the memory moved. The control is the same γ applied to a same-type
swapped state, so a γ that only makes replies louder, not more right, shows up as no gap.

    python research/guided_recall.py [--adapter smollm2-ssw] [--n 200] [--gammas 1 2 3]

Prints, per γ, the answer NLL right / swapped with the paired interval of swapped − right,
and greedy accuracy right / swapped with the paired interval of right − swapped; also the
share of the answer's words found in the reply (partial recall, e.g. "tagine" of "charred
tomato tagine"), right / swapped with its interval.
"""

from __future__ import annotations

import argparse
import json
import re

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import swap_partners
from langchain_deltamem.paired_bootstrap import paired_difference
from langchain_deltamem.reading import is_correct, question_ids
from langchain_deltamem.state import MemoryState
from langchain_deltamem.training import batched
from langchain_deltamem.training.probe import probe_episodes


class GuidedRows(LogitsProcessor):
    """Rows ``[0, B)`` read memory, rows ``[B, 2B)`` the empty state; both get the guided
    scores, so greedy search appends the same token to a row and its empty twin."""

    def __init__(self, gamma: float):
        self.gamma = gamma

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        half = scores.shape[0] // 2
        memory, empty = scores[:half].log_softmax(-1), scores[half:].log_softmax(-1)
        guided = empty + self.gamma * (memory - empty)
        return torch.cat([guided, guided])


def guided_replies(handle, tokenizer, prompts, state: MemoryState, gamma: float) -> list[str]:
    """Greedy replies decoded from the guided scores (16 new tokens at most)."""
    rows = len(prompts)
    width = max(int(p.numel()) for p in prompts)
    pad = int(tokenizer.pad_token_id or 0)
    ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - prompt.numel() :] = prompt
        mask[i, width - prompt.numel() :] = 1
    both = state.concat([state, handle.new_state(rows)])
    with torch.inference_mode(), handle.memory(both, track_corrections=False):
        out = handle.model.generate(
            input_ids=ids.repeat(2, 1),
            attention_mask=mask.repeat(2, 1),
            max_new_tokens=16,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            logits_processor=LogitsProcessorList([GuidedRows(gamma)]),
        )
    return [tokenizer.decode(r[width:], skip_special_tokens=True).strip() for r in out[:rows]]


def word_share(reply: str, answer: str) -> float:
    """The share of the answer's words (case-folded, hyphens split) that the reply contains."""

    def words(text: str) -> list[str]:
        return [w for w in re.split(r"[^a-z]+", text.lower()) if w]

    said = set(words(reply))
    wanted = words(answer)
    return sum(w in said for w in wanted) / max(len(wanted), 1)


def guided_nlls(logits_memory, logits_empty, targets, batch, gamma: float) -> torch.Tensor:
    memory, empty = logits_memory.log_softmax(-1), logits_empty.log_softmax(-1)
    guided = (empty + gamma * (memory - empty)).log_softmax(-1)
    return batched.per_row_mean(F.nll_loss(guided, targets, reduction="none"), batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default="smollm2-ssw")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--no-greedy", action="store_true")
    args = parser.parse_args()

    engine = get_engine(adapter=args.adapter)
    handle, tokenizer = engine.handle, engine.tokenizer
    episodes = probe_episodes(args.n, ("colour", "food"))
    partners = swap_partners(episodes)
    nll = {g: {"right": [], "swapped": []} for g in args.gammas}
    hits = {g: {"right": [], "swapped": []} for g in args.gammas}
    words = {g: {"right": [], "swapped": []} for g in args.gammas}
    with torch.inference_mode():
        states = [
            batched.write_histories(
                handle, tokenizer, [e.history() for e in episodes[s : s + args.batch_size]]
            )
            for s in range(0, len(episodes), args.batch_size)
        ]
        every = states[0].concat(states) if len(states) > 1 else states[0]
    for start in range(0, len(episodes), args.batch_size):
        rows = list(range(start, min(start + args.batch_size, len(episodes))))
        chunk = [episodes[i] for i in rows]
        reads = batched.question_batch(
            tokenizer, [e.question for e in chunk], [e.answer for e in chunk]
        )
        prompts = [question_ids(tokenizer, e.question)[0] for e in chunk]
        with torch.inference_mode():
            empty = batched.scored_logits(handle, reads, None)
            for name, order in (("right", rows), ("swapped", [partners[i] for i in rows])):
                state = batched.permuted(every, order)
                logits = batched.scored_logits(handle, reads, state)
                for g in args.gammas:
                    nll[g][name] += guided_nlls(logits, empty, reads.targets, reads, g).tolist()
                    if args.no_greedy:
                        continue
                    replies = guided_replies(handle, tokenizer, prompts, state, g)
                    pairs = list(zip(replies, chunk, strict=True))
                    hits[g][name] += [float(is_correct(r, e.answer)) for r, e in pairs]
                    words[g][name] += [word_share(r, e.answer) for r, e in pairs]
                    if start == 0 and name == "right":
                        print(
                            f"γ={g} first replies: {replies[:3]} (answers "
                            f"{[e.answer for e in chunk[:3]]})",
                            flush=True,
                        )
        print(f"… {rows[-1] + 1}/{len(episodes)} episodes", flush=True)
    results = []
    for g in args.gammas:
        row = {
            "gamma": g,
            "n": len(episodes),
            "nll_right": sum(nll[g]["right"]) / len(episodes),
            "nll_swapped": sum(nll[g]["swapped"]) / len(episodes),
            "swapped_minus_right": paired_difference(nll[g]["swapped"], nll[g]["right"]).__dict__,
        }
        if not args.no_greedy:
            row["accuracy_right"] = sum(hits[g]["right"]) / len(episodes)
            row["accuracy_swapped"] = sum(hits[g]["swapped"]) / len(episodes)
            row["right_minus_swapped"] = paired_difference(
                hits[g]["right"], hits[g]["swapped"]
            ).__dict__
            row["words_right"] = sum(words[g]["right"]) / len(episodes)
            row["words_swapped"] = sum(words[g]["swapped"]) / len(episodes)
            row["words_right_minus_swapped"] = paired_difference(
                words[g]["right"], words[g]["swapped"]
            ).__dict__
        results.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
