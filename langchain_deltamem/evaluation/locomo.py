"""``deltamem eval locomo``: LoCoMo QA with δ-mem against the memories users would pick instead.

Every system answers the same questions with the same backbone, system prompt, QA instruction
and greedy decoding; they differ only in what they give the model about the conversation:

* ``question_only`` (a): nothing;
* ``recent`` (b): the last ``window`` turns in the prompt (the reference every system is
  compared with);
* ``buffer`` (c): as much of the history as fits the context window; the conversation prefix
  is prefilled once and its KV cache reused for every question;
* ``vector`` (d): the ``top_k`` turns most similar to the question (all-MiniLM-L6-v2 through
  LangChain's in-memory vector store), in conversation order, plus the last ``window`` turns;
* ``deltamem`` / ``deltamem_msw`` (e): the last ``window`` turns, and a δ-mem state holding the
  whole conversation, written turn by turn by the chat model's own write routine;
* ``deltamem_vector`` (f): (d) plus the δ-mem state;
* controls ``zero_state`` (the δ-mem model with an empty state) and ``swapped_state`` (another
  conversation's state), both with the last ``window`` turns.

Answers are cached as JSON lines, so an interrupted run resumes where it stopped; written
states are cached as safetensors bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from langchain_core.messages import HumanMessage, SystemMessage
from tqdm import tqdm

from ..engine import DeltaMemEngine, get_engine
from ..generation import GenerationSettings, generate, output_cache
from ..paired_bootstrap import paired_difference, paired_ratio
from ..prompts import prompt_ids, render_prompt, text_ids
from ..state import MemoryState
from ..writing import MEMORY_SYSTEM_PROMPT, write_history
from .locomo_data import Conversation, Question, Turn, load_locomo, memory_messages, transcript
from .locomo_scoring import CATEGORIES, qa_prompt, score

SYSTEMS = (
    "question_only",
    "recent",
    "buffer",
    "vector",
    "deltamem",
    "deltamem_msw",
    "deltamem_vector",
    "zero_state",
    "swapped_state",
)
REFERENCE = "recent"
DEFAULT_CONVERSATIONS = ("conv-26", "conv-30")
_MEMORY_SYSTEMS = {"deltamem", "deltamem_msw", "deltamem_vector", "zero_state", "swapped_state"}


@dataclass
class BufferPrefix:
    """The buffer system's shared prompt prefix: its ids and their KV cache."""

    ids: torch.Tensor
    cache: Any

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


_MARKER = "\u0000QUESTION\u0000"


@dataclass(frozen=True)
class LoCoMoSettings:
    window: int = 6
    top_k: int = 5
    max_new_tokens: int = 24
    question_reserve: int = 160  # prompt tokens kept free after the buffer's history
    buffer_tokens: int | None = None  # the buffer's context; None = the backbone's window


class LoCoMoEvaluator:
    """Answers one conversation's questions with each system (see the module docstring)."""

    def __init__(
        self,
        engine: DeltaMemEngine,
        *,
        msw_engine: DeltaMemEngine | None = None,
        settings: LoCoMoSettings | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.msw_engine = msw_engine
        self.settings = settings or LoCoMoSettings()
        self.generation = GenerationSettings(
            max_tokens=self.settings.max_new_tokens, temperature=0.0, stop=("\n",)
        )
        self.state_dir = state_dir

    def model_tag(self, system: str) -> str:
        """What a system's answers depend on besides the settings: the backbone, and for the
        memory systems the adapter (its fingerprint), so cached answers of another adapter
        are never reused."""
        engine = self.msw_engine if system == "deltamem_msw" else self.engine
        assert engine is not None
        fingerprint = engine.handle.fingerprint()
        if system not in _MEMORY_SYSTEMS:
            fingerprint = fingerprint.split("/")[0]  # "backbone:<hash>"
        return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]

    # --- what each system sees ------------------------------------------------------------
    def memory_state(self, engine: DeltaMemEngine, conversation: Conversation) -> MemoryState:
        """The conversation written into a new state, turn by turn (cached on disk)."""
        path = None
        if self.state_dir is not None:
            tag = hashlib.sha256(engine.handle.fingerprint().encode()).hexdigest()[:16]
            path = self.state_dir / f"{conversation.id}.{tag}.safetensors"
            if path.is_file():
                return engine.handle.load_state(path.read_bytes())
        with torch.inference_mode():
            state = write_history(engine.handle, engine.tokenizer, memory_messages(conversation))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(state.to_bytes())
            tmp.replace(path)
        return state

    def prompt_ids(self, context: str, question: Question) -> torch.Tensor:
        body = f"{context}\n\n" if context else ""
        return prompt_ids(
            self.engine.tokenizer,
            [
                SystemMessage(MEMORY_SYSTEM_PROMPT),
                HumanMessage(body + qa_prompt(question.question, question.category)),
            ],
        )

    def answer(
        self,
        engine: DeltaMemEngine,
        ids: torch.Tensor,
        state: MemoryState | None,
        prefix_cache: Any | None = None,
    ) -> str:
        memory = engine.handle.memory(state, track_corrections=False) if state else None
        result = generate(
            engine.model,
            engine.tokenizer,
            ids,
            self.generation,
            memory=memory,
            prefix_cache=prefix_cache,
        )
        return result.text.strip()

    # --- one conversation -----------------------------------------------------------------
    def run_conversation(
        self,
        conversation: Conversation,
        systems: Sequence[str],
        *,
        partner: Conversation | None,
        questions: Sequence[Question] | None = None,
        done: set[tuple[str, str]] | None = None,
        on_answer: Any = None,
        progress: tqdm | None = None,
    ) -> None:
        """Answer ``questions`` (default: all) with ``systems``; each answer is handed to
        ``on_answer(record)``; pairs in ``done`` are skipped."""
        done = done or set()
        questions = list(questions if questions is not None else conversation.questions)
        todo = [(s, q) for q in questions for s in systems if (s, q.id) not in done]
        if not todo:
            return
        needed = {s for s, _ in todo}
        turns = conversation.turns
        recent = transcript(turns[-self.settings.window :]) if self.settings.window else ""
        states: dict[str, MemoryState | None] = {}
        if needed & {"deltamem", "deltamem_vector"}:
            states["own"] = self.memory_state(self.engine, conversation)
        if "deltamem_msw" in needed:
            if self.msw_engine is None:
                raise ValueError("system 'deltamem_msw' needs an MSW adapter (--msw-adapter)")
            states["msw"] = self.memory_state(self.msw_engine, conversation)
        if "swapped_state" in needed:
            if partner is None:
                raise ValueError("system 'swapped_state' needs a second conversation")
            states["swapped"] = self.memory_state(self.engine, partner)
        vector = _vector_memory(turns) if needed & {"vector", "deltamem_vector"} else None
        buffer = self._buffer_prefix(turns) if "buffer" in needed else None
        for question in questions:
            for system in systems:
                if (system, question.id) in done:
                    continue
                prediction = self._answer_with(
                    system, question, recent, states, vector, buffer, turns
                )
                record = {
                    "system": system,
                    "model": self.model_tag(system),
                    "conversation": conversation.id,
                    "question_id": question.id,
                    "category": question.category,
                    "question": question.question,
                    "answer": question.answer,
                    "prediction": prediction,
                    "f1": score(prediction, question.answer, question.category),
                }
                if on_answer is not None:
                    on_answer(record)
                if progress is not None:
                    progress.update(1)

    def _answer_with(
        self,
        system: str,
        question: Question,
        recent: str,
        states: dict[str, MemoryState | None],
        vector: Any,
        buffer: BufferPrefix | None,
        turns: Sequence[Turn],
    ) -> str:
        if system == "question_only":
            return self.answer(self.engine, self.prompt_ids("", question), None)
        if system == "recent":
            return self.answer(self.engine, self.prompt_ids(recent, question), None)
        if system == "buffer":
            assert buffer is not None
            return self._answer_from_buffer(buffer, question)
        if system in ("vector", "deltamem_vector"):
            context = _retrieved_context(vector, turns, question, self.settings)
            state = states["own"] if system == "deltamem_vector" else None
            return self.answer(self.engine, self.prompt_ids(context, question), state)
        ids = self.prompt_ids(recent, question)
        if system == "deltamem":
            return self.answer(self.engine, ids, states["own"])
        if system == "deltamem_msw":
            assert self.msw_engine is not None
            return self.answer(self.msw_engine, ids, states["msw"])
        if system == "zero_state":
            return self.answer(self.engine, ids, self.engine.handle.new_state())
        if system == "swapped_state":
            return self.answer(self.engine, ids, states["swapped"])
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")

    # --- buffer memory: the longest history that fits, prefilled once ---------------------
    def _buffer_prefix(self, turns: Sequence[Turn]) -> BufferPrefix:
        """The prompt up to the end of the kept history, prefilled once.

        The prompt of a question is this prefix's tokens followed by the tokens of the rest;
        the history keeps the newest turns that fit the context window."""
        tokenizer = self.engine.tokenizer
        context = self.settings.buffer_tokens or self.engine.context_length
        budget = context - self.settings.max_new_tokens - self.settings.question_reserve
        start = _fit_from_end(tokenizer, turns, budget)
        while True:
            prefix_text = self._buffer_prefix_text(transcript(turns[start:]))
            ids = text_ids(tokenizer, prefix_text)
            if ids.shape[1] <= budget or start >= len(turns) - 1:
                break
            start += max(1, (len(turns) - start) // 50)
        with torch.inference_mode():
            cache = output_cache(self.engine.model(input_ids=ids, use_cache=True))
        return BufferPrefix(ids, cache)

    def _buffer_prefix_text(self, history: str) -> str:
        full = render_prompt(
            self.engine.tokenizer,
            [SystemMessage(MEMORY_SYSTEM_PROMPT), HumanMessage(f"{history}\n\n{_MARKER}")],
        )
        return full[: full.index(_MARKER)]

    def buffer_suffix_ids(self, question: Question) -> torch.Tensor:
        """Ids of the buffer prompt after its shared prefix: the question and the template's
        end of turn and generation prompt."""
        template = render_prompt(
            self.engine.tokenizer,
            [SystemMessage(MEMORY_SYSTEM_PROMPT), HumanMessage(f"x\n\n{_MARKER}")],
        )
        suffix = template[template.index(_MARKER) :].replace(
            _MARKER, qa_prompt(question.question, question.category), 1
        )
        return text_ids(self.engine.tokenizer, suffix)

    def _answer_from_buffer(self, buffer: BufferPrefix, question: Question) -> str:
        ids = self.buffer_suffix_ids(question)
        try:
            return self.answer(self.engine, ids, None, prefix_cache=buffer.cache)
        finally:
            grown = buffer.cache.get_seq_length() - buffer.length
            if grown > 0:  # back to the shared prefix for the next question
                buffer.cache.crop(-grown)  # (transformers 5: a negative count of tokens to drop)


def _fit_from_end(tokenizer: Any, turns: Sequence[Turn], budget: int) -> int:
    """Index of the oldest turn such that the turns from it on roughly fit ``budget`` tokens."""
    total = 64  # system prompt and template
    for index in range(len(turns) - 1, -1, -1):
        line = transcript(turns[index : index + 1])
        total += len(tokenizer(line, add_special_tokens=False).input_ids)
        if total > budget:
            return index + 1
    return 0


def _vector_memory(turns: Sequence[Turn]) -> Any:
    from ..baselines import VectorMemory

    memory = VectorMemory()
    memory.add(
        [f"{t.speaker}: {t.text}" for t in turns],
        metadatas=[{"index": i} for i in range(len(turns))],
    )
    return memory


def _retrieved_context(
    vector: Any, turns: Sequence[Turn], question: Question, settings: LoCoMoSettings
) -> str:
    """Top-k retrieved turns and the recent window, in conversation order (no duplicates)."""
    recent_start = max(0, len(turns) - settings.window) if settings.window else len(turns)
    found = vector.search(question.question, settings.top_k, before=recent_start)
    hits = {d.metadata["index"] for d in found}
    indices = sorted(hits | set(range(recent_start, len(turns))))
    return transcript([turns[i] for i in indices])


# --- running and reporting ----------------------------------------------------------------
def evaluate(
    data: Path,
    *,
    conversations: Sequence[str] = DEFAULT_CONVERSATIONS,
    systems: Sequence[str] = SYSTEMS,
    adapter: str | None = None,
    msw_adapter: str | None = None,
    backbone: str | None = None,
    max_questions: int | None = None,
    settings: LoCoMoSettings | None = None,
    out: Path,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the evaluation; returns every answer record (cached in ``out``).

    Cached answers are reused when the settings match (else an error) and the model matches:
    baselines' answers survive a change of adapter, the memory systems' do not."""
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; expected some of {list(SYSTEMS)}")
    systems = [s for s in systems if s != "deltamem_msw" or msw_adapter]
    convs = load_locomo(data, conversations=conversations)
    all_ids = [c.id for c in load_locomo(data, categories=())]
    engine = get_engine(backbone, adapter)
    msw_engine = get_engine(backbone, msw_adapter) if msw_adapter else None
    evaluator = LoCoMoEvaluator(
        engine, msw_engine=msw_engine, settings=settings, state_dir=out / "states"
    )
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / "settings.json", evaluator.settings)
    cache = out / "answers.jsonl"
    tags = {s: evaluator.model_tag(s) for s in systems}
    records = [r for r in _read_records(cache) if tags.get(r["system"]) == r.get("model")]
    done = {(r["system"], r["question_id"]) for r in records}
    plan = [(c, list(c.questions[:max_questions] if max_questions else c.questions)) for c in convs]
    total = sum(len(qs) for _, qs in plan) * len(systems)
    bar = tqdm(total=total, desc="locomo", disable=not progress, dynamic_ncols=True)
    bar.update(sum(1 for c, qs in plan for q in qs for s in systems if (s, q.id) in done))

    def keep(record: dict[str, Any]) -> None:
        records.append(record)
        with cache.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    for conversation, questions in plan:
        partner_id = all_ids[(all_ids.index(conversation.id) + 1) % len(all_ids)]
        partner = load_locomo(data, conversations=[partner_id], categories=())[0]
        evaluator.run_conversation(
            conversation,
            systems,
            partner=partner if partner_id != conversation.id else None,
            questions=questions,
            done=done,
            on_answer=keep,
            progress=bar,
        )
    bar.close()
    wanted = {q.id for _, qs in plan for q in qs}
    return [r for r in records if r["question_id"] in wanted and r["system"] in systems]


def _check_settings(path: Path, settings: LoCoMoSettings) -> None:
    """Answers cached under other settings are not comparable: refuse to mix them."""
    current = dataclasses.asdict(settings)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != current:
            changed = sorted(k for k in current if saved.get(k) != current[k])
            raise ValueError(
                f"{path.parent} holds answers made with other settings ({', '.join(changed)}: "
                f"{ {k: saved.get(k) for k in changed} }); use another --out"
            )
    else:
        path.write_text(json.dumps(current, indent=2) + "\n")


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # a line cut by a crash can only be the last one; anything else is corruption
            if number != len(lines):
                raise ValueError(f"{path}:{number} is not valid JSON") from None
    return records


def summarize(records: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Per system: mean F1 per category and overall (×100), and paired bootstrap intervals of
    the difference and ratio against the reference system on the questions both answered."""
    by_system: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        by_system.setdefault(record["system"], {})[record["question_id"]] = record
    reference = by_system.get(REFERENCE, {})
    rows = {}
    for system in [s for s in SYSTEMS if s in by_system]:
        answers = by_system[system]
        per_category = {}
        for category, name in CATEGORIES.items():
            scores = [r["f1"] for r in answers.values() if r["category"] == category]
            if scores:
                per_category[name] = {"n": len(scores), "f1": 100 * statistics.fmean(scores)}
        row: dict[str, Any] = {
            "n": len(answers),
            "overall": 100 * statistics.fmean(r["f1"] for r in answers.values()),
            "categories": per_category,
        }
        shared = sorted(set(answers) & set(reference))
        if system != REFERENCE and shared:
            mine = [answers[q]["f1"] for q in shared]
            theirs = [reference[q]["f1"] for q in shared]
            row["minus_reference"] = {
                k: 100 * v for k, v in paired_difference(mine, theirs, seed=seed).__dict__.items()
            }
            row["ratio_to_reference"] = paired_ratio(mine, theirs, seed=seed).__dict__
        rows[system] = row
    return {"reference": REFERENCE, "systems": rows}


def to_markdown(summary: dict[str, Any]) -> str:
    names = list(CATEGORIES.values())
    lines = [
        "| system | n | " + " | ".join(names) + " | overall F1 | − (b) (95% CI) | ÷ (b) (95% CI) |",
        "|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for system, row in summary["systems"].items():
        cells = [
            f"{row['categories'][n]['f1']:.2f}" if n in row["categories"] else "–" for n in names
        ]
        diff = row.get("minus_reference")
        ratio = row.get("ratio_to_reference")
        lines.append(
            f"| {system} | {row['n']} | "
            + " | ".join(cells)
            + f" | {row['overall']:.2f} | "
            + (f"{diff['estimate']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]" if diff else "")
            + " | "
            + (
                f"{ratio['estimate']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}]"
                if ratio
                else ""
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", required=True, help="path of locomo10.json")
    parser.add_argument("--conversations", nargs="+", default=list(DEFAULT_CONVERSATIONS))
    parser.add_argument("--max-questions", type=int, default=None, help="per conversation")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--adapter", default=None, help="δ-mem adapter (default: the package's)")
    parser.add_argument("--msw-adapter", default=None, help="adapter for deltamem_msw")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--window", type=int, default=LoCoMoSettings.window, help="turns")
    parser.add_argument("--top-k", type=int, default=LoCoMoSettings.top_k)
    parser.add_argument("--max-new-tokens", type=int, default=LoCoMoSettings.max_new_tokens)
    parser.add_argument("--out", default="runs/locomo", help="answers cache and summaries")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    records = evaluate(
        Path(args.data),
        conversations=args.conversations,
        systems=args.systems,
        adapter=args.adapter,
        msw_adapter=args.msw_adapter,
        backbone=args.backbone,
        max_questions=args.max_questions,
        settings=LoCoMoSettings(
            window=args.window, top_k=args.top_k, max_new_tokens=args.max_new_tokens
        ),
        out=out,
        progress=not args.no_progress,
    )
    summary = summarize(records)
    table = to_markdown(summary)
    print(table)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    return summary
