"""The read side of an episode: the question's prompt, the answer it must produce, and scoring.

What the chat model does when it answers from memory, as plain functions shared by training
(the loss and the probes) and evaluation (held-out recall): the question is rendered with the
memory system prompt alone (the history is in the state only), the target is the answer and
the end-of-turn token, and a reply is correct when it contains the normalised gold answer.
"""

from __future__ import annotations

import re
import string

import torch
import torch.nn.functional as F
from langchain_core.messages import HumanMessage, SystemMessage

from .injection import AttachedAdapter
from .prompts import prompt_ids
from .state import MemoryState
from .writing import MEMORY_SYSTEM_PROMPT

IGNORE = -100  # label of a position the loss skips (`F.cross_entropy`'s ``ignore_index``)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def question_ids(
    tokenizer: object, question: str, system_prompt: str = MEMORY_SYSTEM_PROMPT
) -> torch.Tensor:
    """Prompt ids of a question as the chat model renders it (``[1, T]``)."""
    return prompt_ids(tokenizer, [SystemMessage(system_prompt), HumanMessage(question)])


def answer_ids(tokenizer: object, answer: str) -> torch.Tensor:
    """Ids of the answer followed by the end-of-turn token (what generation must produce)."""
    ids = tokenizer(answer, add_special_tokens=False).input_ids  # type: ignore[operator]
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    return torch.tensor([*ids, eos])


def answer_nll(
    handle: AttachedAdapter,
    tokenizer: object,
    state: MemoryState,
    question: str,
    answer: str,
    *,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
) -> tuple[torch.Tensor, int]:
    """Mean NLL of the answer tokens given the question, reading ``state`` (writes off)."""
    prompt = question_ids(tokenizer, question, system_prompt)[0]
    target = answer_ids(tokenizer, answer)
    ids = torch.cat([prompt, target])[None].to(state.device)
    labels = torch.full_like(ids, IGNORE)
    labels[0, prompt.shape[0] :] = target.to(ids.device)
    with handle.memory(state, track_corrections=False):
        logits = handle.model(ids, use_cache=False).logits
    nll = F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=IGNORE)
    return nll, int(ids.shape[1])


def normalize(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_correct(reply: str, gold: str) -> bool:
    """Whether the normalised gold answer occurs in the normalised reply."""
    target = normalize(gold)
    return bool(target) and target in normalize(reply)
