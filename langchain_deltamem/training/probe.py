"""The content probe a training run applies to itself every K steps.

Held-out 1-fact episodes (values never seen in training, same-type swapped partners), the
answer NLL with the right state, a swapped state and an empty one, and the paired intervals of
``swapped − right`` (the content effect) and ``zero − right``. n ≥ 200 sees effects of a few
hundredths of a nat; the episodes are those of ``deltamem eval recall --nll --facts 1
--distractors 0 0 --seed 1234`` with the same ``--n`` and ``--value-types``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..evaluation.bootstrap import paired_difference
from ..injection import DeltaMem
from ..writing import MEMORY_SYSTEM_PROMPT, SourceRouter
from . import batched
from .data import Episode, generate_episodes, swap_partners

PROBE_SEED = 1234


def probe_episodes(n: int, value_types: Sequence[str] | None) -> list[Episode]:
    """The held-out probe set (the eval command's episodes for one fact)."""
    return generate_episodes(
        n,
        split="heldout",
        seed=PROBE_SEED + 1,
        num_facts=[1],
        kinds=["facts"],
        distractors=(0, 0),
        value_types=value_types,
    )


def content_probe(
    handle: DeltaMem,
    tokenizer: object,
    episodes: Sequence[Episode],
    *,
    router: SourceRouter | None = None,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    batch_size: int = 50,
    bf16: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """NLL right / swapped / zero per episode and the paired intervals (positive = content)."""
    partners = swap_partners(episodes)
    right: list[float] = []
    swapped: list[float] = []
    zero: list[float] = []
    with torch.inference_mode():
        states = []
        for start in range(0, len(episodes), batch_size):
            chunk = episodes[start : start + batch_size]
            states.append(
                batched.write_histories(
                    handle,
                    tokenizer,
                    [e.history() for e in chunk],
                    router=router,
                    system_prompt=system_prompt,
                    bf16=bf16,
                )
            )
        every = states[0].concat(states) if len(states) > 1 else states[0]
        for start in range(0, len(episodes), batch_size):
            rows = list(range(start, min(start + batch_size, len(episodes))))
            chunk = [episodes[i] for i in rows]
            reads = batched.question_batch(
                tokenizer, [e.question for e in chunk], [e.answer for e in chunk], system_prompt
            )
            for order, out in (
                (rows, right),
                ([partners[i] for i in rows], swapped),
            ):
                state = batched.permuted(every, order)
                out += batched.answer_nlls(handle, reads, state, bf16=bf16).tolist()
            empty = handle.new_state(len(rows))
            zero += batched.answer_nlls(handle, reads, empty, bf16=bf16).tolist()
    gap = paired_difference(swapped, right, seed=seed)
    zero_gap = paired_difference(zero, right, seed=seed)
    return {
        "n": len(episodes),
        "nll_right": sum(right) / len(right),
        "nll_swapped": sum(swapped) / len(swapped),
        "nll_zero": sum(zero) / len(zero),
        "swapped_minus_right": gap.__dict__,
        "zero_minus_right": zero_gap.__dict__,
    }
