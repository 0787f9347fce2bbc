"""``deltamem eval recall``: does an adapter store content? History in memory only.

For each held-out episode (values never seen in training) the history is written into memory
exactly as the chat model writes it, then the question is asked with only the memory system
prompt and the question in the prompt, greedy. Conditions:

* ``right``: the episode's own memory;
* ``swapped``: another episode's memory (same number of facts): same form, wrong content;
* ``zero``: an empty memory (reads are zero, so the output equals the bare backbone's);
* ``question_only``: the bare backbone, no memory attached to the call;
* ``full_history``: the bare backbone with the whole history in the prompt (the ceiling).

A reply is correct when the normalised gold answer is contained in the normalised reply.
``right − swapped`` is the content effect; paired bootstrap intervals are given for it and for
``right − question_only``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from langchain_core.messages import HumanMessage, SystemMessage
from tqdm import tqdm

from ..engine import DeltaMemEngine, get_engine
from ..episodes import Episode, generate_episodes, swap_partners
from ..generation import GenerationSettings, generate
from ..paired_bootstrap import paired_difference
from ..prompts import fit_to_context, history_messages
from ..reading import is_correct, question_ids
from ..training.probe import content_probe
from ..writing import MEMORY_SYSTEM_PROMPT, SourceRouter, parse_tool_states, write_history

CONDITIONS = ("right", "swapped", "zero", "question_only", "full_history")


class RecallEvaluator:
    """Answers held-out questions under each condition on one engine."""

    def __init__(
        self,
        engine: DeltaMemEngine,
        *,
        max_new_tokens: int = 16,
        tool_states: dict[str, int] | None = None,
        system_prompt: str = MEMORY_SYSTEM_PROMPT,
    ) -> None:
        self.engine = engine
        self.settings = GenerationSettings(max_tokens=max_new_tokens, temperature=0.0)
        self.router = SourceRouter(engine.handle.config.num_states, tool_states or {})
        self.system_prompt = system_prompt

    def write(self, episode: Episode) -> Any:
        with torch.inference_mode():
            return write_history(
                self.engine.handle,
                self.engine.tokenizer,
                episode.history(),
                router=self.router,
                system_prompt=self.system_prompt,
            )

    def answer(self, question: str, state: Any | None) -> str:
        """Greedy reply to the question alone, reading ``state`` (None = bare backbone)."""
        ids = question_ids(self.engine.tokenizer, question, self.system_prompt)
        memory = self.engine.handle.memory(state, track_corrections=False) if state else None
        result = generate(
            self.engine.model, self.engine.tokenizer, ids, self.settings, memory=memory
        )
        return result.text

    def answer_with_history(self, episode: Episode) -> str:
        """Greedy reply of the bare backbone with the whole history in the prompt."""
        tokenizer = self.engine.tokenizer
        messages = [SystemMessage(self.system_prompt), *history_messages(episode.history())]
        messages.append(HumanMessage(episode.question))
        limit = self.engine.context_length - self.settings.max_tokens - 1
        _, ids = fit_to_context(tokenizer, messages, limit)  # drops the oldest history first
        return generate(self.engine.model, tokenizer, ids[:, -limit:], self.settings).text

    def run(
        self,
        episodes: Sequence[Episode],
        *,
        cache: Path | None = None,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """One record per episode: the replies and their correctness per condition.

        ``swapped`` uses the next episode's memory among those with the same number of facts.
        With ``cache`` (a JSONL file) finished episodes are kept and skipped on a rerun."""
        done: dict[str, dict[str, Any]] = {}
        if cache is not None and cache.exists():
            for line in cache.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    done[record["id"]] = record
        partner = _swap_partners(episodes)
        states: dict[str, Any] = {}
        records = []
        for episode in tqdm(episodes, desc="recall", disable=not progress, dynamic_ncols=True):
            if episode.id in done:
                records.append(done[episode.id])
                continue
            for needed in (episode, partner[episode.id]):
                if needed.id not in states:
                    states[needed.id] = self.write(needed)
            replies = {
                "right": self.answer(episode.question, states[episode.id]),
                "swapped": self.answer(episode.question, states[partner[episode.id].id]),
                "zero": self.answer(episode.question, self.engine.handle.new_state()),
                "question_only": self.answer(episode.question, None),
                "full_history": self.answer_with_history(episode),
            }
            record = {
                "id": episode.id,
                "kind": episode.kind,
                "num_facts": episode.num_facts,
                "answer": episode.answer,
                "replies": replies,
                "correct": {c: is_correct(r, episode.answer) for c, r in replies.items()},
            }
            records.append(record)
            if cache is not None:
                with cache.open("a") as f:
                    f.write(json.dumps(record) + "\n")
        return records


def _swap_partners(episodes: Sequence[Episode]) -> dict[str, Episode]:
    return {e.id: episodes[j] for e, j in zip(episodes, swap_partners(episodes), strict=True)}


def summarize(records: Sequence[dict[str, Any]], *, seed: int = 0) -> list[dict[str, Any]]:
    """Per number of facts (and overall): accuracy per condition and paired intervals."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record["num_facts"]), []).append(record)
    groups["all"] = list(records)
    rows = []
    for name, group in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0].zfill(4))):
        scores = {c: [float(r["correct"][c]) for r in group] for c in CONDITIONS}
        rows.append(
            {
                "facts": name,
                "n": len(group),
                "accuracy": {c: sum(v) / len(v) for c, v in scores.items()},
                "right_minus_swapped": paired_difference(
                    scores["right"], scores["swapped"], seed=seed
                ).__dict__,
                "right_minus_question_only": paired_difference(
                    scores["right"], scores["question_only"], seed=seed
                ).__dict__,
            }
        )
    return rows


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    def interval(d: dict[str, float]) -> str:
        return f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"

    lines = [
        "| facts | n | right | swapped | zero | question only | full history | right − swapped "
        "(95% CI) | right − question only (95% CI) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        acc = row["accuracy"]
        lines.append(
            f"| {row['facts']} | {row['n']} | "
            + " | ".join(f"{acc[c]:.3f}" for c in CONDITIONS)
            + f" | {interval(row['right_minus_swapped'])}"
            + f" | {interval(row['right_minus_question_only'])} |"
        )
    return "\n".join(lines) + "\n"


def content_nll(
    engine: DeltaMemEngine,
    episodes: Sequence[Episode],
    *,
    tool_states: dict[str, int] | None = None,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    seed: int = 0,
    batch_size: int = 25,
) -> dict[str, Any]:
    """Answer NLL with the right state vs another episode's: the most sensitive content test.

    Exact-match accuracy stays at zero until an adapter can copy a whole value; a content
    effect shows first as a lower NLL of the gold answer under the right memory. Returns the
    means (right, swapped, empty state) and the paired intervals of ``swapped − right``
    (positive = the memory's content helps) and ``zero − right``. The histories are written
    ``batch_size`` at a time in the trainer's batched passes (the same states as writing them
    one by one, within float tolerance; tested)."""
    router = SourceRouter(engine.handle.config.num_states, tool_states or {})
    result = content_probe(
        engine.handle,
        engine.tokenizer,
        episodes,
        router=router,
        system_prompt=system_prompt,
        batch_size=batch_size,
        seed=seed,
    )
    del result["accuracy"]  # greedy replies are the other mode of the command
    return result


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--adapter",
        default=None,
        help="adapter directory, packaged name (smollm2-ssw, -msw, -tsw, -msw-tsw) or fresh-* name",
    )
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--facts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--n", type=int, default=50, help="episodes per number of facts")
    parser.add_argument("--kinds", nargs="*", default=["facts"])
    parser.add_argument(
        "--value-types", nargs="+", default=None, help="only facts with values of these types"
    )
    parser.add_argument(
        "--split",
        choices=["heldout", "train"],
        default="heldout",
        help="train = a diagnostic on values the adapter saw (with --candidates: its pool)",
    )
    parser.add_argument("--candidates", type=int, default=None)
    parser.add_argument("--distractors", type=int, nargs=2, default=[1, 4], metavar=("LO", "HI"))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--nll",
        action="store_true",
        help="only the answer-NLL content test (right vs swapped state), no generation",
    )
    parser.add_argument("--out", default=None, help="directory for records.jsonl, JSON, markdown")
    parser.add_argument("--tool-state", action="append", default=[], metavar="TOOL=INDEX")
    return parser


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    engine = get_engine(args.backbone, args.adapter)
    tool_states = parse_tool_states(args.tool_state)
    evaluator = RecallEvaluator(engine, max_new_tokens=args.max_new_tokens, tool_states=tool_states)
    episodes: list[Episode] = []
    for facts in args.facts:
        episodes += generate_episodes(
            args.n,
            split=args.split,
            seed=args.seed + facts,
            num_facts=[facts],
            kinds=args.kinds,
            candidates=args.candidates,
            distractors=tuple(args.distractors),
            value_types=args.value_types,
        )
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if args.nll:
        result = content_nll(engine, episodes, tool_states=tool_states, seed=args.seed)
        interval = result["swapped_minus_right"]
        print(
            f"n={result['n']}: answer NLL right {result['nll_right']:.3f}, swapped "
            f"{result['nll_swapped']:.3f}, empty {result['nll_zero']:.3f}, "
            f"swapped − right {interval['estimate']:+.3f} "
            f"[{interval['low']:+.3f}, {interval['high']:+.3f}]"
        )
        if out is not None:
            (out / "content_nll.json").write_text(json.dumps(result, indent=2) + "\n")
        return [result]
    records = evaluator.run(episodes, cache=out / "records.jsonl" if out else None)
    rows = summarize(records)
    table = to_markdown(rows)
    print(table)
    if out is not None:
        (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "summary.md").write_text(table)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(prog="deltamem eval recall"))
    run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()
