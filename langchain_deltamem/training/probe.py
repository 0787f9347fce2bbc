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

from ..episodes import Episode, generate_episodes, swap_partners
from ..injection import AttachedAdapter
from ..paired_bootstrap import paired_difference
from ..reading import is_correct, question_ids
from ..state import MemoryState
from ..writing import MEMORY_SYSTEM_PROMPT, SourceRouter
from . import batched

PROBE_SEED = 1234


def probe_episodes(
    n: int,
    value_types: Sequence[str] | None,
    seed: int = PROBE_SEED + 1,
    kinds: Sequence[str] = ("facts",),
) -> list[Episode]:
    """The held-out probe set (the eval command's episodes for one fact); another ``seed``
    draws other held-out one-fact episodes of the same kind. ``kinds=("agent",)`` probes tool
    results (the value only in a tool's output), what an MSW adapter's tool states hold."""
    return generate_episodes(
        n,
        split="heldout",
        seed=seed,
        num_facts=[1],
        kinds=list(kinds),
        distractors=(0, 0),
        value_types=value_types,
    )


def content_probe(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    *,
    router: SourceRouter | None = None,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    batch_size: int = 50,
    bf16: bool = False,
    seed: int = 0,
    greedy: bool = False,
) -> dict[str, Any]:
    """NLL right / swapped / zero per episode and the paired intervals (positive = content);
    the same for the stored value's first answer token alone (``value_start``: where recall
    chooses the value, wherever an answer form puts it) and for its later tokens
    (``value_rest``, mean per episode); with ``greedy`` also the greedy
    accuracy right / swapped (`greedy_accuracy`)."""
    partners = swap_partners(episodes)
    right: list[float] = []
    swapped: list[float] = []
    zero: list[float] = []
    starts: dict[str, list[float]] = {"right": [], "swapped": [], "zero": []}
    rests: dict[str, list[float]] = {"right": [], "swapped": [], "zero": []}
    with torch.inference_mode():
        every = write_states(
            handle,
            tokenizer,
            episodes,
            router=router,
            system_prompt=system_prompt,
            batch_size=batch_size,
            bf16=bf16,
        )
        for start in range(0, len(episodes), batch_size):
            rows = list(range(start, min(start + batch_size, len(episodes))))
            chunk = [episodes[i] for i in rows]
            reads = batched.question_batch(
                tokenizer, [e.question for e in chunk], [e.answer for e in chunk], system_prompt
            )
            first, rest = value_indices(tokenizer, chunk, reads)
            empty = handle.new_state(len(rows))
            for name, state, out in (
                ("right", batched.permuted(every, rows), right),
                ("swapped", batched.permuted(every, [partners[i] for i in rows]), swapped),
                ("zero", empty, zero),
            ):
                nll = batched.token_nlls(handle, reads, state, bf16=bf16)
                out += batched.per_row_mean(nll, reads).tolist()
                starts[name] += nll[first[first >= 0]].tolist()
                rests[name] += [float(nll[r].mean()) for r in rest if r.numel()]
    gap = paired_difference(swapped, right, seed=seed)
    zero_gap = paired_difference(zero, right, seed=seed)
    accuracy = None
    if greedy:
        accuracy = greedy_accuracy(
            handle, tokenizer, episodes, every, partners, system_prompt, batch_size, bf16, seed
        )
    return {
        "accuracy": accuracy,
        "n": len(episodes),
        "nll_right": sum(right) / len(right),
        "nll_swapped": sum(swapped) / len(swapped),
        "nll_zero": sum(zero) / len(zero),
        "swapped_minus_right": gap.__dict__,
        "zero_minus_right": zero_gap.__dict__,
        "value_start": _value_summary(starts, seed),
        "value_rest": _value_summary(rests, seed),
    }


def value_indices(
    tokenizer: object, episodes: Sequence[Episode], reads: batched.ScoredBatch
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per row, the scored-token index of the value's first token (−1 where unknown) and the
    indices of its later tokens (empty for a one-token or unknown value)."""
    counts = torch.bincount(reads.row_of, minlength=reads.rows).tolist()
    firsts, rests, offset = [], [], 0
    for episode, count in zip(episodes, counts, strict=True):
        span = batched.value_token_span(tokenizer, episode)
        if span is None or span[0] >= count:
            firsts.append(-1)
            rests.append(torch.zeros(0, dtype=torch.long))
        else:
            firsts.append(offset + span[0])
            rests.append(torch.arange(offset + span[0] + 1, offset + min(span[1], count)))
        offset += count
    return torch.tensor(firsts, dtype=torch.long), rests


def _value_summary(nlls: dict[str, list[float]], seed: int) -> dict[str, Any] | None:
    """Mean NLL per state of one part of the value (an NLL per episode that has it) and the
    paired swapped − right interval (None when no episode has that part)."""
    if not nlls["right"]:
        return None
    return {
        "n": len(nlls["right"]),
        **{f"nll_{name}": sum(v) / len(v) for name, v in nlls.items()},
        "swapped_minus_right": paired_difference(
            nlls["swapped"], nlls["right"], seed=seed
        ).__dict__,
    }


def write_states(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    *,
    router: SourceRouter | None = None,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    batch_size: int = 50,
    bf16: bool = False,
) -> MemoryState:
    """Every episode's history written into its own state (row i = episode i), in batches."""
    states = []
    with torch.inference_mode():
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
    return states[0].concat(states) if len(states) > 1 else states[0]


def greedy_replies_of(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    states: MemoryState,
    order: Sequence[int],
    *,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    batch_size: int = 50,
    bf16: bool = False,
) -> list[str]:
    """Per episode i, the greedy reply (16 new tokens) to its question, read with state row
    ``order[i]`` (``order = range(n)``: its own memory)."""
    replies: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(episodes), batch_size):
            rows = list(range(start, min(start + batch_size, len(episodes))))
            prompts = [
                question_ids(tokenizer, episodes[i].question, system_prompt)[0] for i in rows
            ]
            replies += batched.greedy_replies(
                handle,
                tokenizer,
                prompts,
                batched.permuted(states, [order[i] for i in rows]),
                bf16=bf16,
            )
    return replies


def greedy_hits(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    states: MemoryState,
    order: Sequence[int],
    **options: Any,
) -> list[float]:
    """Per episode, 1.0 where `greedy_replies_of` holds its whole stored value."""
    replies = greedy_replies_of(handle, tokenizer, episodes, states, order, **options)
    return [float(is_correct(r, e.answer)) for r, e in zip(replies, episodes, strict=True)]


def greedy_accuracy(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    states: MemoryState,
    partners: Sequence[int],
    system_prompt: str,
    batch_size: int,
    bf16: bool,
    seed: int,
) -> dict[str, Any]:
    """Greedy accuracy with the right and the swapped state (16 new tokens), and the paired
    interval of right − swapped. The empty state gives the bare backbone's logits exactly, so
    the question-only and full-history controls do not depend on the adapter: `controls`."""
    options = {"system_prompt": system_prompt, "batch_size": batch_size, "bf16": bf16}
    right = greedy_hits(handle, tokenizer, episodes, states, range(len(episodes)), **options)
    swapped = greedy_hits(handle, tokenizer, episodes, states, partners, **options)
    n = len(episodes)
    return {
        "right": sum(right) / n,
        "swapped": sum(swapped) / n,
        "right_minus_swapped": paired_difference(right, swapped, seed=seed).__dict__,
    }


def controls(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    *,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    batch_size: int = 50,
    bf16: bool = False,
) -> dict[str, float]:
    """Greedy accuracy of the bare backbone: the question alone (= an empty state) and the
    whole history in the prompt (the ceiling)."""
    hits = {"question_only": 0.0, "full_history": 0.0}
    for start in range(0, len(episodes), batch_size):
        chunk = list(episodes[start : start + batch_size])
        alone = [question_ids(tokenizer, e.question, system_prompt)[0] for e in chunk]
        full = batched.history_batch(
            tokenizer,
            [e.history() for e in chunk],
            [e.question for e in chunk],
            [e.answer for e in chunk],
            system_prompt,
        )
        with_history = [
            full.input_ids[b, : int(full.positions[full.row_of == b][0, 1]) + 1]
            for b in range(len(chunk))
        ]
        for name, prompts in (("question_only", alone), ("full_history", with_history)):
            replies = batched.greedy_replies(handle, tokenizer, prompts, None, bf16=bf16)
            hits[name] += sum(is_correct(r, e.answer) for r, e in zip(replies, chunk, strict=True))
    return {name: value / len(episodes) for name, value in hits.items()}
