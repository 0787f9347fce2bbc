"""Episodes as JSON lines (`write_jsonl`, `read_jsonl`) and user chats as episodes
(`load_chats_jsonl`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from .schema import CHAT_KIND, TRAIN, Episode, Message, check_split, describe_error


def write_jsonl(episodes: Iterable[Episode], path: str | Path) -> int:
    """Write one episode per line; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for episode in episodes:
            f.write(json.dumps(episode.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def _json_lines(path: str | Path) -> Iterable[tuple[str, Any]]:
    """``(where, parsed object)`` per non-blank line; bad JSON raises ValueError naming it."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None


def read_jsonl(path: str | Path) -> list[Episode]:
    """Episodes written by `write_jsonl`, validated; a bad line raises ValueError
    ``"<path>:<line>: <problem>"``."""
    episodes = []
    for where, data in _json_lines(path):
        try:
            episodes.append(Episode.from_json(data))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return episodes


def load_chats_jsonl(path: str | Path, *, split: str = TRAIN) -> list[Episode]:
    """User chats ``{"messages": [{"role", "content"[, "name"]}, …]}`` as episodes.

    The last assistant message is the answer, the last user message before it the question,
    everything before the question the history (system messages dropped; a tool message's
    ``name`` gives its source ``tool:<name>``). Malformed lines raise ValueError
    ``"<path>:<line>: <problem>"``.
    """
    check_split(split)
    episodes = []
    for index, (where, data) in enumerate(_json_lines(path)):
        try:
            episodes.append(_chat_episode(data, split, index))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return episodes


def _chat_episode(data: Any, split: str, index: int) -> Episode:
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    chat: list[tuple[str, str, str]] = []
    for i, message in enumerate(data["messages"]):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant", "tool", "system"):
            raise ValueError(f"message {i}: unknown role {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string")
        if role == "system":
            continue
        name = message.get("name")
        if role == "tool" and name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"message {i}: tool name must be a non-empty string")
        source = f"tool:{name or 'tool'}" if role == "tool" else role
        chat.append((role, content, source))
    answer_at = max((i for i, m in enumerate(chat) if m[0] == "assistant"), default=None)
    if answer_at is None:
        raise ValueError("no assistant message (the answer)")
    if answer_at != len(chat) - 1:
        raise ValueError("messages after the last assistant message (the answer)")
    question_at = max((i for i, m in enumerate(chat[:answer_at]) if m[0] == "user"), default=None)
    if question_at is None:
        raise ValueError("no user message (the question) before the answer")
    if question_at != answer_at - 1:
        raise ValueError("messages between the question and the answer are not supported")
    chat_id = data.get("id")
    try:
        return Episode(
            id=chat_id if isinstance(chat_id, str) and chat_id else f"chat-{index:06d}",
            split=split,
            kind=CHAT_KIND,
            num_facts=0,
            messages=tuple(
                Message(role=role, content=content, source=source)
                for role, content, source in chat[:question_at]
            ),
            question=chat[question_at][1],
            answer=chat[answer_at][1],
        )
    except ValidationError as err:
        raise ValueError(describe_error(err)) from None
