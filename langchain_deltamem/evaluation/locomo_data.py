"""LoCoMo conversations as the evaluation sees them: turns with dates, questions, and the two
renderings every system shares (a transcript for prompts, chat messages for memory writes).

The data file is read, never copied: pass its path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SESSION_KEY = re.compile(r"^session_(\d+)$")


class LoCoMoDataError(ValueError):
    """The data file is not LoCoMo-shaped; the message names the conversation and field."""


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    dia_id: str
    session: int
    date: str


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Conversation:
    id: str
    speaker_a: str
    speaker_b: str
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]


def load_locomo(
    path: str | Path,
    *,
    conversations: Sequence[str] | None = None,
    categories: Sequence[int] = (1, 2, 3, 4),
) -> list[Conversation]:
    """Conversations (in file order, or in the order of ``conversations``) with the questions
    of ``categories``. Unknown conversation ids are an error naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoCoMo data not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LoCoMoDataError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(raw, list):
        raise LoCoMoDataError(f"{path}: expected a list of conversations")
    parsed = {item.get("sample_id"): item for item in raw if isinstance(item, dict)}
    wanted = list(conversations) if conversations else list(parsed)
    missing = [c for c in wanted if c not in parsed]
    if missing:
        raise LoCoMoDataError(f"unknown conversation ids {missing}; the file has {list(parsed)}")
    return [_conversation(parsed[c], set(categories)) for c in wanted]


def _conversation(item: dict[str, Any], categories: set[int]) -> Conversation:
    cid = str(item.get("sample_id"))
    conv = item.get("conversation")
    if not isinstance(conv, dict):
        raise LoCoMoDataError(f"{cid}: missing 'conversation'")
    sessions = sorted((int(m.group(1)), key) for key in conv if (m := _SESSION_KEY.match(key)))
    turns: list[Turn] = []
    for number, key in sessions:
        date = str(conv.get(f"{key}_date_time", ""))
        for entry in conv[key] or []:
            if "speaker" not in entry or "text" not in entry:
                raise LoCoMoDataError(f"{cid} {key}: a turn without speaker/text: {entry!r}")
            text = str(entry["text"])
            if entry.get("blip_caption"):
                text += f" [shares a photo: {entry['blip_caption']}]"
            turns.append(Turn(entry["speaker"], text, str(entry.get("dia_id", "")), number, date))
    questions = []
    for index, qa in enumerate(item.get("qa", [])):
        category = int(qa.get("category", 0))
        if category not in categories:
            continue
        if "answer" not in qa:
            raise LoCoMoDataError(f"{cid} question {index}: no answer")
        questions.append(
            Question(
                f"{cid}/{index}",
                str(qa["question"]),
                str(qa["answer"]),
                category,
                tuple(str(e) for e in qa.get("evidence", [])),
            )
        )
    return Conversation(
        cid,
        str(conv.get("speaker_a", "")),
        str(conv.get("speaker_b", "")),
        tuple(turns),
        tuple(questions),
    )


def transcript(turns: Sequence[Turn]) -> str:
    """Prompt text for turns: a ``DATE:`` line whenever the session changes, then one line
    per turn (the layout of the LoCoMo QA baselines: speaker, then what was said)."""
    lines: list[str] = []
    session = None
    for turn in turns:
        if turn.session != session:
            session = turn.session
            lines.append(f"DATE: {turn.date}")
        lines.append(f'{turn.speaker} said, "{turn.text}"')
    return "\n".join(lines)


def memory_messages(conversation: Conversation) -> list[dict[str, str]]:
    """The conversation as chat messages for the chat model's write routine: speaker A as
    the user, speaker B as the assistant (so each exchange is one write call, as in a live
    chat), the speaker's name in the text and the session date on its first turn."""
    messages = []
    session = None
    for turn in conversation.turns:
        text = f"{turn.speaker}: {turn.text}"
        if turn.session != session:
            session = turn.session
            text = f"(DATE: {turn.date}) {text}"
        role = "assistant" if turn.speaker == conversation.speaker_b else "user"
        messages.append({"role": role, "content": text, "source": role})
    return messages
