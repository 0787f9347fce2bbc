"""Episodes for δ-mem adapter training and held-out recall evaluation, synthetic or from chats.

An episode is a chat history that is written into the memory (never shown in the prompt) and a
question answered afterwards from memory alone. Kinds:

* ``facts``: personal facts stated by the user over several sessions, among chatter;
* ``update``: a fact stated, later changed; the latest value is the answer;
* ``two_hop``: "my sister is Mara" + "Mara lives in Quito" → "where does my sister live?";
* ``agent``: the value is only in a tool result (after a ``<tool_call>`` by the assistant);
* ``document``: the value is in a note, memo, itinerary or recipe pasted by the user;
* ``absent``: the question asks about something never stated → `NO_INFORMATION`.

A held-out score must measure recall, not memorised values or phrasings, so:

* values come from large open pools (made-up names from syllables, random codes, made-up
  streets, cafés and bands, dates…), and each value belongs to exactly one split, fixed by a
  hash of the value itself (`value_pool`);
* every template family holds out some of its templates (`template_sets`): held-out episodes
  are phrased only with those, training episodes never use them.

Every value in an episode is tracked: an episode is kept only if each value occurs exactly in
the messages meant to hold it (no accidental substrings), so e.g. an ``agent`` answer is
guaranteed to be in the tool result and nowhere else.

Modules, in the order they build on each other: `schema` (the episode format), `values` (value
pools), `templates` (phrasings, fact families, tools, documents), `builder`
(`generate_episodes`, `swap_partners`), `jsonl` (files) and `cli` (``deltamem data``).
"""

from __future__ import annotations

from .builder import generate_episodes, swap_partners
from .jsonl import load_chats_jsonl, read_jsonl, write_jsonl
from .schema import CHAT_KIND, HELDOUT, KINDS, NO_INFORMATION, SPLITS, TRAIN, Episode, Message
from .templates import Templates, template_sets
from .values import VALUE_TYPES, ValuePool, candidate_values, value_pool

__all__ = [
    "CHAT_KIND",
    "HELDOUT",
    "KINDS",
    "NO_INFORMATION",
    "SPLITS",
    "TRAIN",
    "VALUE_TYPES",
    "Episode",
    "Message",
    "Templates",
    "ValuePool",
    "candidate_values",
    "generate_episodes",
    "load_chats_jsonl",
    "read_jsonl",
    "swap_partners",
    "template_sets",
    "value_pool",
    "write_jsonl",
]
