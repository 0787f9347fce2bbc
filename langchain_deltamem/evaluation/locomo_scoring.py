"""LoCoMo QA scoring: the per-category token-F1 rules and the QA prompt text.

Categories 1 multi-hop, 2 temporal, 3 open-domain and 4 single-hop are scored; category 5
(adversarial) is excluded from the protocol, so :func:`score` rejects it rather than guessing.
Every score is a bag-of-tokens F1 over normalised, Porter-stemmed tokens, so that surface
variation (case, punctuation, articles, inflection) does not count as an error.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any

from ..extras import require

CATEGORIES: dict[int, str] = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}

QA_PROMPT = (
    "Based on the above conversations, write a short answer for the following question in a few "
    "words. Do not write complete and lengthy sentences. Answer with exact words from the "
    "conversations whenever possible."
)
TEMPORAL_SUFFIX = " Use DATE of CONVERSATION to answer with an approximate date."

_PUNCTUATION = frozenset(string.punctuation)
_DROPPED_WORDS = re.compile(r"\b(a|an|the|and)\b")


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    """One shared stemmer: construction is cheap but there is no reason to repeat it per token.
    (nltk is the ``eval`` extra, imported on first use so the CLI starts without it.)"""
    require("eval", "LoCoMo scoring")
    from nltk.stem import PorterStemmer

    return PorterStemmer()


def qa_prompt(question: str, category: int) -> str:
    """The question, a newline, then the instruction (``f"{question}\\n{instruction}"``).

    The question comes first so the instruction is the last thing the model reads before
    answering; temporal questions (category 2) get the date hint appended to the instruction.
    """
    instruction = QA_PROMPT + TEMPORAL_SUFFIX if category == 2 else QA_PROMPT
    return f"{question}\n{instruction}"


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop a/an/the/and, collapse whitespace.

    The steps run in the protocol's order; "and" is dropped along with the articles because list
    answers differ mostly in how their items are joined ("x and y" vs "x, y").
    """
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _DROPPED_WORDS.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Normalised, Porter-stemmed tokens, so "runs"/"running" match "run"."""
    stemmer = _stemmer()
    return [stemmer.stem(token) for token in normalize_answer(text).split()]


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 with multiset overlap; 0.0 if either side is empty or nothing overlaps."""
    pred_tokens = answer_tokens(prediction)
    gold_tokens = answer_tokens(gold)
    if not pred_tokens or not gold_tokens:
        return 0.0
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _multi_hop_f1(prediction: str, gold: str) -> float:
    """Mean over comma-separated gold parts of the best F1 against any prediction part.

    Multi-hop answers are lists; this credits each gold item found anywhere in the prediction
    without penalising the order in which items are listed.
    """
    pred_parts = prediction.split(",")
    gold_parts = gold.split(",")
    return sum(max(token_f1(p, g) for p in pred_parts) for g in gold_parts) / len(gold_parts)


def score(prediction: str, gold: str | int, category: int) -> float:
    """Score one prediction against its gold answer under the LoCoMo rule for ``category``.

    Gold answers may be ints in the data (e.g. a year), hence ``str(gold)``.
    Raises ``ValueError`` for categories outside 1–4 (including the excluded adversarial 5).
    """
    if category not in CATEGORIES:
        raise ValueError(
            f"LoCoMo category {category!r} is not scored; expected one of {sorted(CATEGORIES)}"
        )
    prediction, gold = str(prediction), str(gold)
    if category == 1:
        return _multi_hop_f1(prediction, gold)
    if category == 3:
        gold = gold.split(";")[0]
    return token_f1(prediction, gold)
