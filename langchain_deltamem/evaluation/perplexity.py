"""Does the memory leave ordinary text alone? Perplexity with an unrelated memory.

A trained adapter must not turn the backbone into a worse language model: reading a memory
that has nothing to do with the text should cost little. For each held-out chat we score every
token of the rendered conversation three ways: the bare backbone (no memory block), the adapter
with an empty state (must equal the bare backbone: reads are zero), and the adapter reading
the state written from *another* chat (the unrelated memory). The goal is a perplexity within
5 % of the bare backbone's.

    deltamem eval perplexity --adapter DIR --n 40 [--locomo PATH/locomo10.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..engine import DeltaMemEngine, get_engine
from ..episodes import generate_episodes
from ..paired_bootstrap import paired_difference
from ..prompts import chat_ids
from ..writing import write_history

GOAL_RATIO = 1.05
Chat = Sequence[Mapping[str, str]]


def held_out_chats(n: int, seed: int = 4321) -> list[list[dict[str, str]]]:
    """``n`` held-out synthetic chats (held-out templates and values, plenty of chatter)."""
    episodes = generate_episodes(
        n,
        split="heldout",
        seed=seed,
        num_facts=(1, 2, 4),
        kinds=("facts", "update", "document", "absent"),
        distractors=(1, 3),
    )
    return [[{"role": m["role"], "content": m["content"]} for m in e.history()] for e in episodes]


def locomo_chats(path: str | Path, n: int, turns: int = 12) -> list[list[dict[str, str]]]:
    """Windows of ``turns`` consecutive LoCoMo turns (real chat text, never trained on)."""
    from .locomo_data import load_locomo, memory_messages

    chats: list[list[dict[str, str]]] = []
    for conversation in load_locomo(path):
        messages = memory_messages(conversation)
        for start in range(0, len(messages) - turns + 1, turns):
            window = messages[start : start + turns]
            chats.append([{"role": m["role"], "content": m["content"]} for m in window])
            if len(chats) >= n:
                return chats
    return chats


def token_nll(
    engine: DeltaMemEngine, chat: Chat, state: Any | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of the rendered ``chat`` and the logits; ``state`` None = bare backbone."""
    ids = chat_ids(engine.tokenizer, chat)
    with torch.no_grad():
        if state is None:
            logits = engine.model(ids, use_cache=False).logits
        else:
            with engine.handle.memory(state, track_corrections=False):
                logits = engine.model(ids, use_cache=False).logits
    nll = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")
    return nll, logits


def perplexity_check(
    engine: DeltaMemEngine, chats: Sequence[Chat], *, progress: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Bare, empty-state and unrelated-memory perplexity over ``chats`` (chat i reads the
    memory written from chat i + 1), with a paired bootstrap interval over chats."""
    if len(chats) < 2:
        raise ValueError(f"need at least 2 chats (one's memory is another's), got {len(chats)}")
    handle, tokenizer = engine.handle, engine.tokenizer
    bare_sums, unrelated_sums, counts = [], [], []
    max_zero_diff = 0.0
    for i, chat in enumerate(tqdm(chats, desc="perplexity", disable=not progress)):
        with torch.no_grad():
            other = write_history(handle, tokenizer, chats[(i + 1) % len(chats)])
        bare, bare_logits = token_nll(engine, chat)
        _, zero_logits = token_nll(engine, chat, handle.new_state())
        unrelated, _ = token_nll(engine, chat, other)
        max_zero_diff = max(max_zero_diff, float((zero_logits - bare_logits).abs().max()))
        bare_sums.append(float(bare.sum()))
        unrelated_sums.append(float(unrelated.sum()))
        counts.append(bare.numel())
    tokens = sum(counts)
    ppl_bare = math.exp(sum(bare_sums) / tokens)
    ppl_unrelated = math.exp(sum(unrelated_sums) / tokens)
    per_chat_bare = [s / c for s, c in zip(bare_sums, counts, strict=True)]
    per_chat_unrelated = [s / c for s, c in zip(unrelated_sums, counts, strict=True)]
    log_ratio = paired_difference(per_chat_unrelated, per_chat_bare, seed=seed)
    return {
        "chats": len(chats),
        "tokens": tokens,
        "ppl_bare": ppl_bare,
        "ppl_unrelated_memory": ppl_unrelated,
        "ratio": ppl_unrelated / ppl_bare,
        "ratio_ci_per_chat": [math.exp(log_ratio.low), math.exp(log_ratio.high)],
        "goal_ratio": GOAL_RATIO,
        "met": ppl_unrelated / ppl_bare <= GOAL_RATIO,
        "max_abs_logit_diff_empty_state": max_zero_diff,
    }


def to_markdown(result: Mapping[str, Any], source: str) -> str:
    low, high = result["ratio_ci_per_chat"]
    return (
        "| text | chats | tokens | ppl bare | ppl unrelated memory | ratio (95% CI) | goal ≤ 1.05× "
        "| max logit diff, empty state |\n|---|---|---|---|---|---|---|---|\n"
        f"| {source} | {result['chats']} | {result['tokens']:,} | {result['ppl_bare']:.3f} "
        f"| {result['ppl_unrelated_memory']:.3f} | {result['ratio']:.4f} [{low:.4f}, {high:.4f}] "
        f"| {'yes' if result['met'] else 'NO'} | {result['max_abs_logit_diff_empty_state']:.2e} |\n"
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--adapter",
        default=None,
        help="adapter directory, packaged name (smollm2-ssw, -msw, -tsw, -msw-tsw) or fresh-* name",
    )
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--n", type=int, default=40, help="chats")
    parser.add_argument(
        "--locomo", default=None, help="score LoCoMo turn windows instead of synthetic chats"
    )
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--out", default=None, help="write perplexity.json and .md here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    engine = get_engine(args.backbone, args.adapter)
    if args.locomo:
        chats, source = locomo_chats(args.locomo, args.n), "LoCoMo windows of 12 turns"
    else:
        chats, source = held_out_chats(args.n, args.seed), "held-out synthetic chats"
    result = perplexity_check(engine, chats, progress=not args.no_progress)
    result["source"] = source
    table = to_markdown(result, source)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "perplexity.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "perplexity.md").write_text(table)
    return result
