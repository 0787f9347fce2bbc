"""Synthetic episodes for δ-mem adapter training and held-out recall evaluation.

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
"""

from __future__ import annotations

import argparse
import calendar
import functools
import json
import random
import string
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from ..tool_calling import format_tool_call

NO_INFORMATION = "No information available."
KINDS = ("facts", "update", "two_hop", "agent", "document", "absent")
TRAIN, HELDOUT = "train", "heldout"
SPLITS = (TRAIN, HELDOUT)
CHAT_KIND = "chat"

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
    "main",
    "read_jsonl",
    "template_sets",
    "value_pool",
    "write_jsonl",
]


# --- the episode format -------------------------------------------------------------------


class Message(BaseModel):
    """One history message, exactly the segment dict `DeltaMemory` writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["user", "assistant", "tool"]
    content: StrictStr
    source: StrictStr

    @model_validator(mode="after")
    def _source_matches_role(self) -> Message:
        if self.role == "tool":
            if not self.source.startswith("tool:") or self.source == "tool:":
                raise ValueError(f"tool message source must be 'tool:<name>', got {self.source!r}")
        elif self.source != self.role:
            raise ValueError(f"{self.role} message source must be {self.role!r}")
        return self


class Episode(BaseModel):
    """A history to write into memory, then a question and its target answer.

    ``meta`` says what was asked (``key``, ``value_type``, ``value``) and, per kind,
    ``old_value`` (update), ``bridge`` (two_hop), ``tool`` (agent) or ``doc`` (document); it is
    for analysis and tests, never for the model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: StrictStr = Field(min_length=1)
    split: Literal["train", "heldout"]
    kind: StrictStr = Field(min_length=1)
    num_facts: StrictInt = Field(ge=0)
    messages: tuple[Message, ...]
    question: StrictStr = Field(min_length=1)
    answer: StrictStr = Field(min_length=1)
    meta: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    def history(self) -> list[dict[str, str]]:
        """The messages as plain ``{"role", "content", "source"}`` dicts (for memory writes)."""
        return [m.model_dump() for m in self.messages]

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict (``messages`` as a list of dicts)."""
        data = self.model_dump()
        data["messages"] = [dict(m) for m in data["messages"]]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Episode:
        """Validate a dict made by `to_json`; raises ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"an episode must be a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ValueError(_describe(err)) from None


def _describe(err: ValidationError) -> str:
    """The first validation problem as ``field.path: message`` (pydantic's text is long)."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "episode"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


# --- value pools --------------------------------------------------------------------------


def _split_of(value: str) -> str:
    """The split a value belongs to, fixed by the value itself: the two pools never overlap,
    whatever generator or seed produced the value."""
    return HELDOUT if zlib.crc32(value.encode("utf-8")) % 4 == 0 else TRAIN


_ONSETS = (
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p", "qu",
    "r", "s", "sh", "st", "t", "tr", "v", "z", "th",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou", "ia")
_ENDINGS = (
    "", "n", "r", "l", "s", "x", "th", "lle", "mo", "na", "ra", "ko", "via", "dre", "nix", "ren",
    "wen", "sa", "lo", "tte",
)  # fmt: skip
_REAL_NAMES = (
    "Mara", "Tomás", "Priya", "Jonas", "Aiko", "Luca", "Zoe", "Omar", "Ines", "Kwame", "Anya",
    "Bram", "Chiara", "Dmitri", "Esra", "Farid", "Greta", "Hiro", "Ilse", "Jalen", "Keziah",
    "Lior", "Mateo", "Nadia", "Oskar", "Paloma", "Quentin", "Rania", "Soren", "Tamsin", "Umar",
    "Vera", "Wendel", "Ximena", "Yusuf", "Zara", "Leilani", "Bodhi", "Cosima", "Dario", "Elif",
    "Femi", "Gwen", "Hamid", "Isolde", "Joaquim", "Katya", "Lorcan", "Mirela", "Nkechi", "Orla",
    "Pavel", "Rosalind", "Saoirse", "Thiago", "Ulla", "Valentin", "Wiebke", "Yara", "Zubair",
)  # fmt: skip
_REAL_CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Osaka", "Lyon", "Denver", "Porto", "Krakow", "Quito", "Tbilisi",
    "Hobart", "Ghent", "Bergen", "Cusco", "Dakar", "Gdansk", "Hanoi", "Izmir", "Jaipur", "Kyoto",
    "Leipzig", "Malmo", "Nantes", "Oaxaca", "Perth", "Riga", "Seville", "Tallinn", "Utrecht",
    "Valencia", "Windhoek", "Xalapa", "Yerevan", "Zagreb", "Accra", "Bilbao", "Cork", "Dublin",
    "Florence", "Granada", "Halifax", "Innsbruck", "Kampala", "Ljubljana", "Medellin", "Naples",
    "Odense", "Pune", "Reykjavik", "Salzburg", "Trieste", "Uppsala", "Vilnius", "Wellington",
)  # fmt: skip
_CITY_PATTERNS = (
    "{r}", "Port {r}", "{r} Falls", "{r}burg", "San {r}", "{r}haven", "New {r}", "{r} Springs",
    "Lake {r}", "{r}ford", "{r}stad", "Nova {r}", "{r} Bay", "Upper {r}",
)  # fmt: skip
_WORD_ROOTS = (
    "Willow", "Copper", "Linden", "Harbour", "Mill", "Station", "Orchard", "Chapel", "Meadow",
    "Foundry", "Juniper", "Quarry", "Heron", "Bramble", "Cedar", "Tanner", "Rowan", "Falcon",
    "Lantern", "Market", "Granary", "Clover", "Ferry", "Beacon", "Ivy", "Larch", "Saffron",
    "Pebble", "Thistle", "Maple",
)  # fmt: skip
_STREET_SUFFIXES = (
    "Street", "Lane", "Road", "Avenue", "Way", "Row", "Close", "Terrace", "Crescent", "Place",
    "Gardens", "Hill", "Walk", "Square",
)  # fmt: skip
_ADJECTIVES = (
    "Copper", "Sleepy", "Crooked", "Velvet", "Golden", "Little", "Blue", "Wild", "Quiet", "Salty",
    "Rusty", "Amber", "Lucky", "Hidden", "Lazy", "Brave", "Silver", "Humble", "Odd", "Paper",
)  # fmt: skip
_NOUNS = (
    "Kettle", "Fox", "Spoon", "Lantern", "Owl", "Anchor", "Bean", "Teapot", "Sparrow", "Moth",
    "Compass", "Ladder", "Badger", "Cup", "Feather", "Pine", "Otter", "Barrel", "Crow", "Bicycle",
)  # fmt: skip
_PLURALS = (
    "Foxes", "Lanterns", "Owls", "Anchors", "Sparrows", "Moths", "Ladders", "Badgers", "Feathers",
    "Otters", "Crows", "Bicycles", "Wolves", "Comets", "Echoes", "Tigers", "Satellites", "Pilots",
    "Ghosts", "Engines",
)  # fmt: skip
_FOOD_STYLES = (
    "spicy", "smoked", "roasted", "crispy", "creamy", "grilled", "sweet", "sour", "garlic",
    "lemon", "ginger", "honey", "smoky", "herby", "chilli", "buttery", "charred", "pickled",
    "toasted", "slow-cooked",
)  # fmt: skip
_INGREDIENTS = (
    "aubergine", "mango", "lentil", "mushroom", "pumpkin", "salmon", "tofu", "chickpea", "leek",
    "beetroot", "halloumi", "prawn", "spinach", "sweet potato", "duck", "cauliflower", "fennel",
    "squid", "apricot", "walnut", "pork", "lamb", "paneer", "tomato", "coconut", "cabbage",
    "plum", "chestnut", "trout", "kimchi",
)  # fmt: skip
_DISHES = (
    "tacos", "curry", "risotto", "dumplings", "noodles", "stew", "pie", "salad", "soup",
    "flatbread", "skewers", "gnocchi", "ramen", "burritos", "tart", "pasta", "fritters", "bao",
    "pilaf", "gratin", "omelette", "pancakes", "sandwich", "tagine", "chowder",
)  # fmt: skip
_SHADES = (
    "pale", "dusty", "deep", "bright", "muted", "soft", "dark", "electric", "smoky", "warm",
    "cool", "pastel", "burnt", "faded", "vivid", "misty", "royal", "midnight", "powder", "neon",
    "ash", "storm", "forest", "ocean", "candy", "sunset", "olive", "rose", "ice", "moss",
)  # fmt: skip
_COLOURS = (
    "blue", "teal", "green", "red", "orange", "yellow", "purple", "pink", "grey", "brown",
    "lilac", "mint", "coral", "turquoise", "maroon", "ochre", "saffron", "indigo", "violet",
    "amber", "emerald", "sage", "rust", "navy", "cyan", "magenta", "crimson", "mustard", "peach",
    "lavender", "plum", "jade", "cobalt", "scarlet", "gold", "silver", "bronze", "copper",
    "cream", "charcoal", "taupe", "sand", "cherry", "lime", "aqua",
)  # fmt: skip
_MONTHS = tuple(calendar.month_name[1:])
_UPPER = string.ascii_uppercase
_ALNUM = string.ascii_uppercase + string.digits
_PHONE_CODES = (1, 31, 33, 34, 39, 44, 46, 49, 55, 61, 81, 91, 351, 353, 358)


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10**n)).zfill(n)


def _letters(rng: random.Random, n: int, alphabet: str = _UPPER) -> str:
    return "".join(rng.choices(alphabet, k=n))


def _made_up(rng: random.Random, *, ending: bool = True) -> str:
    """A pronounceable made-up word from syllables ("Zorvelle", "Kadrimo")."""
    syllables = rng.choice((2, 2, 2, 3))
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return (word + (rng.choice(_ENDINGS) if ending else "")).capitalize()


def _gen_name(rng: random.Random) -> str:
    return rng.choice(_REAL_NAMES) if rng.random() < 0.15 else _made_up(rng)


def _gen_city(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(_REAL_CITIES)
    return rng.choice(_CITY_PATTERNS).format(r=_made_up(rng, ending=rng.random() < 0.5))


def _gen_street(rng: random.Random) -> str:
    root = rng.choice(_WORD_ROOTS) if rng.random() < 0.4 else _made_up(rng, ending=False)
    street = f"{root} {rng.choice(_STREET_SUFFIXES)}"
    return f"{rng.randint(1, 299)} {street}" if rng.random() < 0.6 else street


_CAFE_PATTERNS = (
    "Café {r}", "The {adj} {noun}", "{r}'s Coffee", "{adj} {noun} Coffee", "The {noun} & {noun2}",
    "{r} Bakehouse", "Bar {r}", "{r} Roasters",
)  # fmt: skip
_BAND_PATTERNS = (
    "The {adj} {plural}", "{r} and the {plural}", "{adj} {noun}", "{r} {noun} Club",
    "The {r} Quartet", "{noun} Theory", "DJ {r}", "The {plural} of {r}",
)  # fmt: skip
_HOTEL_PATTERNS = (
    "Hotel {r}", "The {r} Grand", "{adj} {noun} Inn", "{r} Lodge", "Casa {r}", "{r} Suites",
)  # fmt: skip


def _from_pattern(rng: random.Random, patterns: Sequence[str]) -> str:
    """A made-up place or band name: a pattern filled with a syllable word and word lists."""
    return rng.choice(patterns).format(
        r=_made_up(rng),
        adj=rng.choice(_ADJECTIVES),
        noun=rng.choice(_NOUNS),
        noun2=rng.choice(_NOUNS),
        plural=rng.choice(_PLURALS),
    )


def _gen_cafe(rng: random.Random) -> str:
    return _from_pattern(rng, _CAFE_PATTERNS)


def _gen_band(rng: random.Random) -> str:
    return _from_pattern(rng, _BAND_PATTERNS)


def _gen_hotel(rng: random.Random) -> str:
    return _from_pattern(rng, _HOTEL_PATTERNS)


def _gen_food(rng: random.Random) -> str:
    return f"{rng.choice(_FOOD_STYLES)} {rng.choice(_INGREDIENTS)} {rng.choice(_DISHES)}"


def _gen_colour(rng: random.Random) -> str:
    shade, base = rng.choice(_SHADES), rng.choice(_COLOURS)
    return f"{shade} {base}" if rng.random() < 0.5 else f"{shade} {base}-{rng.choice(_COLOURS)}"


def _gen_date(rng: random.Random) -> str:
    year, month = rng.randint(1970, 2039), rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    name = _MONTHS[month - 1]
    form = rng.randrange(4)
    if form == 0:
        return f"{name} {day}"
    if form == 1:
        return f"{day} {name}"
    if form == 2:
        return f"{name} {day}, {year}"
    return f"{year}-{month:02d}-{day:02d}"


def _gen_time(rng: random.Random) -> str:
    hour, minute = rng.randint(0, 23), rng.randint(0, 59)
    if rng.random() < 0.5:
        return f"{hour:02d}:{minute:02d}"
    return f"{(hour - 1) % 12 + 1}:{minute:02d} {'am' if hour < 12 else 'pm'}"


def _gen_pin(rng: random.Random) -> str:
    return _digits(rng, rng.randint(4, 6))


def _gen_code(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return _digits(rng, rng.randint(3, 8))
    return f"{_letters(rng, rng.randint(1, 2))}-{_digits(rng, rng.randint(3, 5))}"


def _gen_flight(rng: random.Random) -> str:
    return _letters(rng, 2) + str(rng.randint(1, 9)) + _digits(rng, rng.randint(1, 3))


def _gen_order_id(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        return f"#{_digits(rng, 8)}"
    if form == 1:
        return f"{_letters(rng, 2)}-{_digits(rng, 6)}"
    if form == 2:
        return f"ORD-{_digits(rng, 5)}{_letters(rng, 1)}"
    return f"{_letters(rng, 3)}{_digits(rng, 4)}{_letters(rng, 2)}"


def _gen_tracking(rng: random.Random) -> str:
    form = rng.randrange(3)
    if form == 0:
        return f"{_letters(rng, 2)}{_digits(rng, 9)}{_letters(rng, 2)}"
    if form == 1:
        return f"1Z{_letters(rng, 10, _ALNUM)}"
    return f"TRK{_digits(rng, 8)}"


def _gen_phone(rng: random.Random) -> str:
    form = rng.randrange(3)
    if form == 0:
        return f"+{rng.choice(_PHONE_CODES)} {_digits(rng, 3)} {_digits(rng, 3)} {_digits(rng, 4)}"
    if form == 1:
        return f"0{_digits(rng, 4)} {_digits(rng, 6)}"
    return f"({rng.randint(200, 999)}) {_digits(rng, 3)}-{_digits(rng, 4)}"


def _gen_password(rng: random.Random) -> str:
    if rng.random() < 0.5:
        symbol = rng.choice(("", "!", "?", "#", "$", "%", "&", "*"))
        return f"{_made_up(rng)}{_digits(rng, rng.randint(2, 4))}{symbol}"
    words = rng.sample(_NOUNS + _ADJECTIVES, 2)
    return f"{words[0].lower()}-{words[1].lower()}-{rng.randint(10, 99)}"


def _gen_temperature(rng: random.Random) -> str:
    return f"{rng.randint(-250, 449) / 10:.1f}°C"


_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "name": _gen_name,
    "city": _gen_city,
    "street": _gen_street,
    "cafe": _gen_cafe,
    "band": _gen_band,
    "hotel": _gen_hotel,
    "food": _gen_food,
    "colour": _gen_colour,
    "date": _gen_date,
    "time": _gen_time,
    "pin": _gen_pin,
    "code": _gen_code,
    "flight": _gen_flight,
    "order_id": _gen_order_id,
    "tracking": _gen_tracking,
    "phone": _gen_phone,
    "password": _gen_password,
    "temperature": _gen_temperature,
}
VALUE_TYPES = tuple(_GENERATORS)


@dataclass(frozen=True)
class ValuePool:
    """The open pool of one value type in one split: whatever the type's generator produces
    whose hash falls in the split (membership checks only the split, not the format)."""

    value_type: str
    split: str

    def __post_init__(self) -> None:
        if self.value_type not in _GENERATORS:
            raise ValueError(f"unknown value type {self.value_type!r}; one of {VALUE_TYPES}")
        _check_split(self.split)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and _split_of(value) == self.split

    def sample(self, rng: random.Random) -> str:
        """One value drawn from the whole open pool."""
        generate = _GENERATORS[self.value_type]
        while True:
            value = generate(rng)
            if _split_of(value) == self.split:
                return value

    def take(self, k: int, seed: int = 0) -> tuple[str, ...]:
        """The curriculum's first ``k`` values (see `candidate_values`)."""
        return candidate_values(self.value_type, self.split, seed, k)


def value_pool(value_type: str, split: str) -> ValuePool:
    """The open pool of ``value_type`` (one of `VALUE_TYPES`) in ``split``."""
    return ValuePool(value_type, split)


@functools.lru_cache(maxsize=256)
def candidate_values(value_type: str, split: str, seed: int, k: int) -> tuple[str, ...]:
    """The first ``k`` distinct values of the pool shuffled by ``seed`` (fewer if the pool is
    smaller). Growing ``k`` keeps the earlier values, so a curriculum only ever adds values."""
    if k < 1:
        raise ValueError(f"candidates must be ≥ 1, got {k}")
    pool = value_pool(value_type, split)
    rng = random.Random(f"candidates:{value_type}:{split}:{seed}")
    seen: dict[str, None] = {}
    misses = 0
    while len(seen) < k and misses < 5_000:  # 5,000 repeats in a row: the pool is exhausted
        value = pool.sample(rng)
        misses = misses + 1 if value in seen else 0
        seen[value] = None
    return tuple(seen)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# --- templates ----------------------------------------------------------------------------

_REGISTRY: dict[str, Templates] = {}
_SEEN_TEMPLATES: set[str] = set()


@dataclass(frozen=True)
class Templates:
    """A family of interchangeable phrasings; ``heldout`` ones never appear in training."""

    name: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]

    def pick(self, rng: random.Random, split: str) -> str:
        return rng.choice(self.heldout if split == HELDOUT else self.train)


def _t(name: str, *items: str) -> Templates:
    """Register a family: every 4th template (the last of a shorter list) is held out."""
    if len(items) < 2 or name in _REGISTRY:
        raise ValueError(f"template family {name!r}: needs ≥ 2 templates and a unique name")
    for item in items:
        if item in _SEEN_TEMPLATES:
            raise ValueError(f"template {item!r} is registered twice")
        _SEEN_TEMPLATES.add(item)
    held = {len(items) - 1} if len(items) < 4 else set(range(3, len(items), 4))
    family = Templates(
        name,
        tuple(s for i, s in enumerate(items) if i not in held),
        tuple(s for i, s in enumerate(items) if i in held),
    )
    _REGISTRY[name] = family
    return family


def template_sets(split: str) -> dict[str, tuple[str, ...]]:
    """Every template family's templates for ``split`` (the two splits share none)."""
    _check_split(split)
    return {
        name: family.heldout if split == HELDOUT else family.train
        for name, family in _REGISTRY.items()
    }


def _placeholders(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


# Statements and their acknowledgements.
_LEAD_INS = _t(
    "lead_in",
    "Quick note: ",
    "Oh, before I forget: ",
    "Random, but worth saying. ",
    "Long day today. ",
    "One more thing: ",
    "Something to remember. ",
    "Okay, here's one for you. ",
    "Not important, but still. ",
)
_QUESTION_LEADS = _t(
    "question_lead",
    "Quick question: ",
    "Question for you. ",
    "Okay, memory test. ",
    "Help me out here. ",
    "I need to check something. ",
)
_ACKS = _t(
    "ack",
    "Got it, I'll remember that.",
    "Noted!",
    "Thanks, I've made a note of it.",
    "Okay, good to know.",
    "Understood.",
    "I'll keep that in mind.",
    "Thanks for telling me.",
    "Sure, noted.",
)
_ECHO_ACKS = _t(
    "ack_echo",
    "Noted: {v}.",
    "Got it, {v}.",
    "Okay, {v}. I'll remember.",
    "Saved: {v}.",
    "Thanks! {v}, noted.",
)
_DOC_INTROS = _t(
    "doc_intro",
    "Here are my notes, can you keep them?",
    "Pasting this so I don't lose it:",
    "Save this for me, please:",
    "Keep this somewhere safe:",
    "Can you hold on to this?",
    "Found this in my drafts, storing it here:",
)
_DOC_ACKS = _t(
    "doc_ack",
    "Saved. Let me know if you need anything from it.",
    "Got it, I've kept a copy.",
    "Thanks, I'll hold on to these notes.",
    "All stored.",
    "Okay, I have it.",
)
_TOOL_PREFACES = _t(
    "tool_preface",
    "Let me check.",
    "One moment, looking that up.",
    "Sure, checking now.",
    "I'll look it up.",
    "On it.",
)
_TOOL_FOLLOWUPS = _t(
    "tool_followup",
    "Done, I've pulled up the details.",
    "Got the result.",
    "That's what the system returned.",
    "All set, I have the details now.",
    "Okay, the lookup finished.",
)

# Chatter: (user templates, assistant replies) per topic; fillers contain no digits.
_WEATHER = (
    "rainy", "sunny", "grey", "windy", "foggy", "freezing", "humid", "stormy", "mild", "drizzly",
    "snowy", "muggy",
)  # fmt: skip
_ACTIVITIES = (
    "hiking", "baking bread", "learning the cello", "running by the river", "painting",
    "playing chess online", "gardening", "rock climbing", "reading old sci-fi", "fixing my bike",
    "knitting", "learning to juggle", "swimming laps", "making pottery", "birdwatching",
    "doing yoga", "trying a new board game", "cleaning out the garage", "sorting old photos",
    "practising calligraphy",
)  # fmt: skip
_TIMES = (
    "this weekend", "tomorrow morning", "after work", "tonight", "next week", "on my day off",
    "later today", "some time soon",
)  # fmt: skip
_PLACES = (
    "the park", "the market", "the library", "the beach", "the gym", "the old town",
    "the museum", "the garden centre",
)  # fmt: skip
_FEELINGS = (
    "nervous", "excited", "unsure", "tired", "curious", "a bit stressed", "hopeful", "restless",
    "calm", "overwhelmed",
)  # fmt: skip
_EVENTS = (
    "the presentation at work", "moving house", "my first half marathon", "the dinner party",
    "the exam", "the trip", "starting a new course", "the family reunion", "the team offsite",
    "the concert",
)  # fmt: skip
_TOPICS = (
    "learning a new language", "keeping plants alive", "sleeping better", "cooking on a budget",
    "staying focused", "getting up earlier", "decluttering", "saving money", "writing more",
    "drinking less coffee",
)  # fmt: skip
_THINGS = ("book", "podcast", "film", "series", "record", "documentary", "game")
_OPINIONS = ("surprisingly good", "a bit slow", "really gripping", "weird but fun", "too long")
_MEALS = ("soup", "pasta", "toast", "salad", "noodles", "pancakes", "stew", "rice")

_CHATTER: tuple[tuple[Templates, Templates], ...] = (
    (
        _t(
            "chat_weather",
            "It's so {weather} here today.",
            "The weather has been {weather} all week.",
            "Ugh, {weather} again. I wanted to go to {place}.",
            "Looks like another {weather} day.",
            "Is it just me or has it been really {weather} lately?",
        ),
        _t(
            "reply_weather",
            "Weather like that can really set the mood for the day.",
            "Hopefully it clears up soon.",
            "A good excuse for a cosy afternoon, maybe.",
            "That sounds like a day for a warm drink.",
            "Fingers crossed the weekend is nicer.",
        ),
    ),
    (
        _t(
            "chat_plans",
            "I'm thinking about {activity} {time}.",
            "Planning to spend some time {activity} {time}.",
            "Maybe I'll try {activity} {time}, what do you think?",
            "I've been {activity} a lot lately.",
            "Heading to {place} {time}.",
        ),
        _t(
            "reply_plans",
            "That sounds like a lovely plan.",
            "Nice, enjoy it!",
            "Sounds fun, let me know how it goes.",
            "Good idea, a change of pace helps.",
            "That should be a nice break.",
        ),
    ),
    (
        _t(
            "chat_feelings",
            "I'm feeling {feeling} about {event}.",
            "Honestly a little {feeling} today.",
            "Not sure why, but I feel {feeling} about {event}.",
            "Woke up {feeling} this morning, thinking about {event}.",
            "Everyone keeps asking about {event} and I'm {feeling}.",
        ),
        _t(
            "reply_feelings",
            "That's completely understandable.",
            "Thanks for sharing that. Take it one step at a time.",
            "It's normal to feel that way.",
            "I'm here if you want to talk it through.",
            "You've handled harder things before.",
        ),
    ),
    (
        _t(
            "chat_advice",
            "Any tips for {topic}?",
            "Do you have advice on {topic}?",
            "I keep failing at {topic}.",
            "How do people get better at {topic}?",
            "What's a good first step for {topic}?",
        ),
        _t(
            "reply_advice",
            "Start small and keep it consistent.",
            "Try setting a tiny daily goal and building from there.",
            "It helps to pick one habit at a time.",
            "Tracking progress, even roughly, makes a difference.",
            "Be patient with yourself, it takes a while.",
        ),
    ),
    (
        _t(
            "chat_media",
            "I just finished a {thing} that was {opinion}.",
            "Started a new {thing} yesterday, {opinion} so far.",
            "My friend lent me a {thing}. Verdict: {opinion}.",
            "Finally got around to that {thing} everyone talks about. {Opinion}!",
        ),
        _t(
            "reply_media",
            "Sometimes those are the best finds.",
            "Nice, it's always good to have something new to enjoy.",
            "Interesting! Would you recommend it?",
            "Ha, that's a mixed review.",
            "Good to hear your take on it.",
        ),
    ),
    (
        _t(
            "chat_food",
            "Making {meal} for dinner tonight.",
            "I had {meal} for lunch and now I'm sleepy.",
            "Craving {meal} right now.",
            "Tried a new way of making {meal}, not bad.",
        ),
        _t(
            "reply_food",
            "Yum, sounds good.",
            "Nothing wrong with a comfort meal.",
            "Enjoy your meal!",
            "That sounds tasty.",
        ),
    ),
)
_GREETINGS = (
    _t(
        "chat_greeting",
        "Hi again!",
        "Hello, it's me again.",
        "Good morning!",
        "Hey, back for a bit.",
        "Evening! Got a minute?",
        "Hi there, new day.",
    ),
    _t(
        "reply_greeting",
        "Welcome back! What's on your mind?",
        "Hello again! How can I help?",
        "Good to see you. What's up?",
        "Hi! I'm here.",
        "Hey! What shall we talk about?",
    ),
)


# --- fact families ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """A kind of personal fact; ``quals`` tell its slots apart ("sister", "cat", …) and give
    each slot's value type. One slot is stated at most once per episode (its ``key``)."""

    name: str
    state: Templates
    ask: Templates
    update: Templates
    quals: tuple[tuple[str, str], ...]
    field: str = ""


@dataclass(frozen=True)
class _Slot:
    family: _Family
    qual: str
    value_type: str

    @property
    def key(self) -> str:
        return f"{self.family.name}:{self.qual}" if self.qual else self.family.name

    @property
    def fields(self) -> dict[str, str]:
        return {self.family.field: self.qual} if self.family.field else {}


def _single(value_type: str) -> tuple[tuple[str, str], ...]:
    return (("", value_type),)


def _typed(value_type: str, *quals: str) -> tuple[tuple[str, str], ...]:
    return tuple((q, value_type) for q in quals)


_RELATIONS = (
    "sister", "brother", "cousin", "best friend", "boss", "neighbour", "colleague", "flatmate",
    "aunt", "uncle", "grandmother", "grandfather", "dentist", "personal trainer", "piano teacher",
    "niece", "nephew", "godmother", "mentor", "accountant", "doctor",
)  # fmt: skip
_SPECIES = (
    "cat", "dog", "parrot", "rabbit", "hamster", "tortoise", "goldfish", "ferret", "pony",
    "guinea pig", "canary", "hedgehog", "gecko",
)  # fmt: skip
_GROUPS = (
    "my book club", "the hiking group", "my old classmates", "the new team", "my study group",
    "my running club", "the neighbours",
)  # fmt: skip
_APPOINTMENTS = (
    "dentist appointment", "job interview", "driving test", "doctor's appointment", "haircut",
    "visa appointment", "car service", "eye test", "piano recital", "court hearing",
    "vet appointment", "moving day",
)  # fmt: skip
_CODES = (
    "work locker code", "gym locker code", "office door code", "alarm code", "bike lock code",
    "safe combination", "parking spot number", "membership number", "library card number",
    "employee ID", "gate code",
)  # fmt: skip
_RELATION = _Family(
    "relation",
    _t(
        "relation_state",
        "My {rel} is called {v}.",
        "My {rel}'s name is {v}.",
        "Oh, I should mention that my {rel} is {v}.",
        "{v} is my {rel}, by the way.",
        "You haven't met my {rel} yet. {v} is lovely, you'd get along.",
        "I had lunch with my {rel}, {v}, earlier today.",
        "For the record, my {rel} goes by {v}.",
        "Talked to my {rel} {v} on the phone for an hour.",
    ),
    _t(
        "relation_ask",
        "What is my {rel}'s name?",
        "What's my {rel} called?",
        "Who is my {rel}?",
        "Do you remember my {rel}'s name?",
        "Remind me, what is my {rel} called?",
        "What was my {rel}'s name again?",
    ),
    _t(
        "relation_update",
        "Correction: my {rel} is actually called {v}, not {old}.",
        "Sorry, I mixed up names earlier: my {rel} is {v}.",
        "I misspoke before, my {rel} is called {v}.",
        "Update: my {rel} is {v}.",
        "Let me fix something: my {rel}'s name is {v}, not {old}.",
    ),
    _typed("name", *_RELATIONS),
    "rel",
)
_PET = _Family(
    "pet",
    _t(
        "pet_state",
        "My {species} is called {v}.",
        "We named our {species} {v}.",
        "Our {species}'s name is {v}.",
        "I just adopted a {species} and called it {v}.",
        "Meet {v}, my {species}!",
        "My {species}, {v}, knocked a plant over again.",
        "The {species} is named {v}, in case I mention it.",
        "{v} the {species} has been sleeping all day.",
    ),
    _t(
        "pet_ask",
        "What is my {species} called?",
        "What's my {species}'s name?",
        "What did I name my {species}?",
        "Do you remember what my {species} is called?",
        "What's the name of our {species}?",
    ),
    _t(
        "pet_update",
        "We renamed the {species}, it's {v} now.",
        "Actually my {species} is called {v}, not {old}.",
        "Sorry, wrong name before: the {species} is {v}.",
        "New name for the {species}: {v}.",
        "The kids renamed our {species} to {v}.",
    ),
    _typed("name", *_SPECIES),
    "species",
)
_LIVE_CITY = _Family(
    "live_city",
    _t(
        "live_city_state",
        "I live in {v}.",
        "I'm based in {v} these days.",
        "Home for me is {v}.",
        "I've been living in {v} for a few years now.",
        "We settled in {v} after university.",
        "Life in {v} is pretty quiet, honestly.",
    ),
    _t(
        "live_city_ask",
        "Which city do I live in?",
        "Where do I live?",
        "What city am I based in?",
        "Where's home for me?",
        "In which city do I live?",
    ),
    _t(
        "live_city_update",
        "Big news: I moved, I live in {v} now.",
        "We relocated to {v} last month.",
        "Correction, I actually live in {v}, not {old}.",
        "Update: home is now {v}.",
        "I've just finished moving to {v}.",
    ),
    _single("city"),
)
_HOMETOWN = _Family(
    "hometown",
    _t(
        "hometown_state",
        "I grew up in {v}.",
        "I was born in {v}.",
        "My hometown is {v}.",
        "Originally I'm from {v}.",
        "Spent my whole childhood in {v}.",
        "I'm from {v} originally, small place.",
    ),
    _t(
        "hometown_ask",
        "Where did I grow up?",
        "What's my hometown?",
        "Where am I originally from?",
        "Which town was I born in?",
        "Where did I spend my childhood?",
    ),
    _t(
        "hometown_update",
        "Correction: I grew up in {v}, not {old}.",
        "I misspoke, my hometown is actually {v}.",
        "Sorry, I was born in {v}, I mixed that up.",
        "To be precise, my hometown is {v}.",
    ),
    _single("city"),
)
_TRIP_CITY = _Family(
    "trip_city",
    _t(
        "trip_city_state",
        "My next trip is to {v}.",
        "I'm travelling to {v} next month.",
        "We booked a holiday in {v}.",
        "Next stop for me: {v}.",
        "I'm heading to {v} for a conference soon.",
    ),
    _t(
        "trip_city_ask",
        "Where is my next trip?",
        "Which city am I travelling to next?",
        "Where's my upcoming holiday?",
        "What's the destination of my next trip?",
        "Where am I going on my next trip?",
    ),
    _t(
        "trip_city_update",
        "Change of plans, the trip is to {v} now.",
        "We switched the holiday to {v}.",
        "The plan changed, so I'm going to {v} instead of {old}.",
        "New destination for the trip: {v}.",
    ),
    _single("city"),
)
_HOME_STREET = _Family(
    "home_street",
    _t(
        "home_street_state",
        "I live on {v}.",
        "My address is {v}.",
        "Our home is at {v}.",
        "We're at {v}, the blue door.",
        "If you ever need it, my address is {v}.",
    ),
    _t(
        "home_street_ask",
        "What street do I live on?",
        "What's my address?",
        "What's my home address?",
        "What address did I give you for home?",
        "Which street is my home on?",
    ),
    _t(
        "home_street_update",
        "We moved, my new address is {v}.",
        "Correction: I'm on {v}, not {old}.",
        "Update your notes: I live at {v} now.",
        "Just changed homes, the new place is {v}.",
    ),
    _single("street"),
)
_OFFICE_STREET = _Family(
    "office_street",
    _t(
        "office_street_state",
        "Our office is on {v}.",
        "Work is at {v} now.",
        "The office moved to {v} last year.",
        "Work is at {v}, a short walk from the station.",
        "My office address is {v}.",
    ),
    _t(
        "office_street_ask",
        "What street is my office on?",
        "Where is my office?",
        "What's my work address?",
        "Where do I work, address-wise?",
        "Which address is my office at?",
    ),
    _t(
        "office_street_update",
        "The office relocated, it's at {v} now.",
        "Correction: work is on {v}, not {old}.",
        "We changed offices, new address {v}.",
        "From next week the office is at {v}.",
    ),
    _single("street"),
)
_FAV_CAFE = _Family(
    "fav_cafe",
    _t(
        "fav_cafe_state",
        "My favourite café is {v}.",
        "I basically live at {v}, best coffee in town.",
        "Nothing beats the coffee at {v}.",
        "If I'm not home, I'm probably at {v}.",
        "My go-to coffee spot is {v}.",
    ),
    _t(
        "fav_cafe_ask",
        "What's my favourite café?",
        "Which café do I like best?",
        "Where's my go-to coffee spot?",
        "Which café did I say has the best coffee?",
        "What café do I love?",
    ),
    _t(
        "fav_cafe_update",
        "New favourite café: {v}.",
        "I've switched cafés, {v} is my favourite now.",
        "Correction: my favourite café is {v}, not {old}.",
        "These days I prefer {v} for coffee.",
    ),
    _single("cafe"),
)
_MEET_PLACE = _Family(
    "meet_place",
    _t(
        "meet_place_state",
        "I'm meeting {who} at {v} on Saturday.",
        "The get-together with {who} is at {v}.",
        "We picked {v} for the meetup with {who}.",
        "Catching up with {who} at {v} later this week.",
        "Meeting spot with {who}: {v}.",
    ),
    _t(
        "meet_place_ask",
        "Where am I meeting {who}?",
        "Where is the meetup with {who}?",
        "Which place did we pick for {who}?",
        "Where's the get-together with {who}?",
        "What's the meeting spot with {who}?",
    ),
    _t(
        "meet_place_update",
        "The meetup with {who} moved to {v}.",
        "Change of venue with {who}: {v} instead of {old}.",
        "We're now meeting {who} at {v}.",
        "New spot for {who}: {v}.",
    ),
    _typed("cafe", *_GROUPS),
    "who",
)
_APPOINTMENT = _Family(
    "appointment",
    _t(
        "appointment_state",
        "My {event} is on {v}.",
        "I've got my {event} on {v}.",
        "Heads up, my {event} is scheduled for {v}.",
        "They booked my {event} for {v}.",
        "Don't let me forget: {event} on {v}.",
        "My {event} finally has a date: {v}.",
    ),
    _t(
        "appointment_ask",
        "When is my {event}?",
        "What date is my {event}?",
        "On which date is my {event}?",
        "When did I say my {event} was?",
        "What's the date of my {event}?",
    ),
    _t(
        "appointment_update",
        "My {event} got moved to {v}.",
        "They rescheduled my {event} to {v}.",
        "Update: the {event} is now on {v}, not {old}.",
        "Change of date for my {event}: {v}.",
        "The {event} was pushed to {v}.",
    ),
    _typed("date", *_APPOINTMENTS),
    "event",
)
_SPECIAL_DATE = _Family(
    "special_date",
    _t(
        "special_date_state",
        "My {occasion} is on {v}.",
        "Mark your calendar: my {occasion} is {v}.",
        "Just so you know, my {occasion} falls on {v}.",
        "My {occasion}? That's {v}.",
        "We celebrate my {occasion} on {v}.",
    ),
    _t(
        "special_date_ask",
        "When is my {occasion}?",
        "What's the date of my {occasion}?",
        "On what date is my {occasion}?",
        "Do you know when my {occasion} is?",
    ),
    _t(
        "special_date_update",
        "Oops, my {occasion} is actually {v}, not {old}.",
        "I got that wrong, my {occasion} is on {v}.",
        "Correction on my {occasion}: it's {v}.",
        "Let me fix that: {occasion} is {v}.",
    ),
    _typed("date", "birthday", "wedding anniversary", "graduation", "name day", "retirement party"),
    "occasion",
)
_FAV_FOOD = _Family(
    "fav_food",
    _t(
        "fav_food_state",
        "My favourite food is {v}.",
        "I could eat {v} every single day.",
        "Nothing beats {v} for me.",
        "Honestly, {v} is my comfort food.",
        "If I had to pick one dish forever, it'd be {v}.",
    ),
    _t(
        "fav_food_ask",
        "What's my favourite food?",
        "Which dish do I love most?",
        "What's my comfort food?",
        "What food could I eat every day?",
        "What would I pick as my favourite dish?",
    ),
    _t(
        "fav_food_update",
        "My favourite food changed, it's {v} now.",
        "New obsession: {v} beats everything.",
        "Correction: my favourite dish is {v}, not {old}.",
        "These days I'd pick {v} over anything.",
    ),
    _single("food"),
)
_FAV_COLOUR = _Family(
    "fav_colour",
    _t(
        "fav_colour_state",
        "My favourite colour is {v}.",
        "I painted my room {v}, it's my favourite colour.",
        "Anything in {v} and I'm sold.",
        "Favourite colour? Definitely {v}.",
        "I'm really into {v} as a colour.",
    ),
    _t(
        "fav_colour_ask",
        "What's my favourite colour?",
        "Which colour do I like best?",
        "What colour am I really into?",
        "Which colour did I call my favourite?",
        "Tell me my favourite colour.",
    ),
    _t(
        "fav_colour_update",
        "I've changed my mind, my favourite colour is {v}.",
        "New favourite colour: {v}.",
        "Correction: it's {v}, not {old}, that I love.",
        "Lately my favourite colour is {v}.",
    ),
    _single("colour"),
)
_FAV_BAND = _Family(
    "fav_band",
    _t(
        "fav_band_state",
        "My favourite band is {v}.",
        "I've been listening to {v} on repeat.",
        "Nobody beats {v} live.",
        "If you ask me, {v} is the best band around.",
        "I saw {v} in concert, still my favourite band.",
    ),
    _t(
        "fav_band_ask",
        "What's my favourite band?",
        "Which band do I love most?",
        "Who's my favourite band?",
        "Which band did I say is the best?",
        "Name my favourite band.",
    ),
    _t(
        "fav_band_update",
        "New favourite band: {v}.",
        "I've moved on, {v} is my favourite now.",
        "Correction: my favourite band is {v}, not {old}.",
        "These days it's all {v} for me.",
    ),
    _single("band"),
)
_CODE = _Family(
    "code",
    _t(
        "code_state",
        "My {thing} is {v}.",
        "Note for later: my {thing} is {v}.",
        "Please remember my {thing}: {v}.",
        "I keep forgetting my {thing}, it's {v}.",
        "Writing this down here: {thing} {v}.",
        "Can you keep track of my {thing}? It's {v}.",
        "FYI, my {thing} is {v}.",
        "Just got my {thing}: {v}.",
    ),
    _t(
        "code_ask",
        "What is my {thing}?",
        "What's my {thing} again?",
        "Remind me of my {thing}.",
        "I forgot my {thing}, what is it?",
        "Can you tell me my {thing}?",
        "Do you have my {thing}?",
    ),
    _t(
        "code_update",
        "Actually my {thing} changed to {v}.",
        "Heads up, new {thing}: {v}.",
        "They reset my {thing}, it's {v} now.",
        "Correction: my {thing} is {v}, not {old}.",
        "My {thing} got updated to {v}.",
        "Forget the old one, my {thing} is now {v}.",
    ),
    (
        *_typed("code", *_CODES),
        *_typed("pin", "phone PIN", "card PIN", "voicemail PIN"),
        *_typed("flight", "outbound flight number", "return flight number"),
        *_typed("order_id", "order number", "booking reference"),
        ("laptop password", "password"),
        ("office phone number", "phone"),
    ),
    "thing",
)
_FAMILIES = (
    _RELATION, _PET, _LIVE_CITY, _HOMETOWN, _TRIP_CITY, _HOME_STREET, _OFFICE_STREET, _FAV_CAFE,
    _MEET_PLACE, _APPOINTMENT, _SPECIAL_DATE, _FAV_FOOD, _FAV_COLOUR, _FAV_BAND, _CODE,
)  # fmt: skip


@dataclass(frozen=True)
class _PersonAttr:
    """A fact about a third person ("{n} lives in {v}"), asked through a relation (two-hop)."""

    name: str
    value_type: str
    state: Templates
    ask: Templates


_PERSON_ATTRS = (
    _PersonAttr(
        "city",
        "city",
        _t(
            "person_city_state",
            "{n} lives in {v}.",
            "{n} just moved to {v}.",
            "{n} is based in {v} these days.",
            "{n} has been living in {v} since spring.",
            "Apparently {n} loves living in {v}.",
        ),
        _t(
            "person_city_ask",
            "Which city does my {rel} live in?",
            "Where does my {rel} live?",
            "In which city is my {rel} based?",
            "What city is my {rel} living in?",
            "Where is my {rel} based these days?",
        ),
    ),
    _PersonAttr(
        "work",
        "cafe",
        _t(
            "person_work_state",
            "{n} works at {v}.",
            "{n} got a job at {v}.",
            "{n} runs the counter at {v}.",
            "{n} has worked at {v} for years.",
            "You can find {n} at {v} most days, that's where they work.",
        ),
        _t(
            "person_work_ask",
            "Where does my {rel} work?",
            "Which place does my {rel} work at?",
            "Where did my {rel} get a job?",
            "What's my {rel}'s workplace?",
        ),
    ),
    _PersonAttr(
        "birthday",
        "date",
        _t(
            "person_birthday_state",
            "{n}'s birthday is on {v}.",
            "{n} was born on {v}.",
            "We celebrate {n}'s birthday on {v}.",
            "{n} turns a year older on {v}.",
        ),
        _t(
            "person_birthday_ask",
            "When is my {rel}'s birthday?",
            "What's my {rel}'s birthday?",
            "On what date was my {rel} born?",
            "When do we celebrate my {rel}'s birthday?",
        ),
    ),
    _PersonAttr(
        "band",
        "band",
        _t(
            "person_band_state",
            "{n} is a huge fan of {v}.",
            "{n} never stops playing {v}.",
            "{n}'s favourite band is {v}.",
            "{n} dragged me to a {v} concert once.",
        ),
        _t(
            "person_band_ask",
            "Which band does my {rel} love?",
            "What's my {rel}'s favourite band?",
            "Which band is my {rel} a fan of?",
            "Who does my {rel} listen to all the time?",
        ),
    ),
    _PersonAttr(
        "flight",
        "flight",
        _t(
            "person_flight_state",
            "{n} is arriving on flight {v}.",
            "{n} booked flight {v}.",
            "{n} flies in on {v}.",
            "{n}'s flight number is {v}.",
        ),
        _t(
            "person_flight_ask",
            "Which flight is my {rel} on?",
            "What flight did my {rel} book?",
            "What's my {rel}'s flight number?",
            "On which flight does my {rel} arrive?",
        ),
    ),
    _PersonAttr(
        "phone",
        "phone",
        _t(
            "person_phone_state",
            "{n}'s phone number is {v}.",
            "You can reach {n} on {v}.",
            "{n} gave me a new number: {v}.",
            "{n}'s mobile is {v}.",
        ),
        _t(
            "person_phone_ask",
            "What's my {rel}'s phone number?",
            "How do I reach my {rel} by phone?",
            "Which number does my {rel} have?",
            "What's my {rel}'s mobile number?",
        ),
    ),
)


# --- tools --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ask:
    """A value a tool result or document holds that a question can target."""

    field: str
    value_type: str
    questions: Templates


@dataclass(frozen=True)
class _Tool:
    name: str
    asks: tuple[_Ask, ...]


_ORDER_REQUEST = _t(
    "order_request",
    "Can you check on my order {order}?",
    "Where is my order {order}?",
    "Please look up order {order} for me.",
    "Any news on order {order}?",
    "What's happening with order {order}?",
)
_WEATHER_REQUEST = _t(
    "weather_request",
    "What's the weather going to be like in {city} on {date}?",
    "Can you get the forecast for {city} on {date}?",
    "Check the weather in {city} for {date}, please.",
    "Will I need a jacket in {city} on {date}?",
    "Could you see what the forecast says for {city} on {date}?",
)
_NOTES_REQUEST = _t(
    "notes_request",
    "Can you search my notes for the {topic}?",
    "Look through my notes for the {topic}, please.",
    "I wrote down the {topic} somewhere, can you find it?",
    "Find the {topic} in my notes.",
    "Search my notes, I need the {topic}.",
)
_NOTE_SNIPPETS = _t(
    "note_snippet",
    "The {topic} is {v}.",
    "{Topic}: {v}",
    "Remember, the {topic} is {v}.",
    "Saved on the fridge: {topic} {v}.",
    "For next time, {topic} = {v}.",
)
_CALENDAR_REQUEST = _t(
    "calendar_request",
    "What's on my calendar for {date}?",
    "Can you check my schedule on {date}?",
    "Do I have anything on {date}?",
    "Pull up my calendar for {date}, please.",
    "What does {date} look like for me?",
)
_CONTACT_REQUEST = _t(
    "contact_request",
    "Can you look up {n}'s contact details?",
    "Find {n} in my contacts.",
    "I need {n}'s details, can you check?",
    "Get me the contact card for {n}.",
    "Pull up {n} from my address book.",
)
_NOTE_TOPICS = (
    ("guest wifi password", "password"),
    ("garage door code", "code"),
    ("insurance policy number", "order_id"),
    ("plumber's phone number", "phone"),
    ("shed padlock combination", "code"),
    ("passport number", "order_id"),
    ("electricity meter number", "code"),
)
_NOTE_TITLES = ("House stuff", "Misc", "Important", "Home admin", "To remember", "Scribbles")
_ORDER_STATUSES = ("shipped", "in transit", "out for delivery", "processing", "delayed")
_CARRIERS = ("ParcelPoint", "SwiftShip", "Northline Post", "BlueBox Freight", "Courier Nine")
_CONDITIONS = ("light rain", "sunny", "overcast", "thunderstorms", "snow showers", "fog", "clear")
_EVENT_TITLES = (
    "dentist appointment", "team standup", "budget review", "yoga class", "lunch with {n}",
    "call with {n}", "parent-teacher meeting", "book club", "project kickoff", "coffee with {n}",
)  # fmt: skip

_NOTES_QUESTIONS = _t(
    "notes_ask",
    "According to my notes, what is the {topic}?",
    "What did my notes say the {topic} was?",
    "What's the {topic} from my notes?",
    "Which {topic} did the note have?",
    "Look at what my notes said: what's the {topic}?",
)
_CALENDAR_WHERE = _t(
    "calendar_where_ask",
    "Where is the {title} on {date}?",
    "What's the location of the {title} on {date}?",
    "Where do I need to be for the {title} on {date}?",
    "Where is the {title} on {date} taking place?",
    "Which place is the {title} on {date} at?",
)
_TOOLS = (
    _Tool(
        "lookup_order",
        (
            _Ask(
                "tracking",
                "tracking",
                _t(
                    "order_tracking_ask",
                    "What is the tracking number for order {order}?",
                    "Which tracking number did order {order} get?",
                    "Remind me of the tracking number on order {order}.",
                    "What's order {order}'s tracking number?",
                    "Give me the tracking number of order {order}.",
                ),
            ),
            _Ask(
                "delivery",
                "date",
                _t(
                    "order_delivery_ask",
                    "When is order {order} supposed to arrive?",
                    "What delivery date was given for order {order}?",
                    "On what date should order {order} arrive?",
                    "When will order {order} be delivered?",
                    "What's the estimated delivery of order {order}?",
                ),
            ),
        ),
    ),
    _Tool(
        "get_weather",
        (
            _Ask(
                "temperature",
                "temperature",
                _t(
                    "weather_ask",
                    "What temperature was forecast for {city} on {date}?",
                    "How warm was it supposed to be in {city} on {date}?",
                    "What was the forecast temperature in {city} for {date}?",
                    "Which temperature did the forecast give for {city} on {date}?",
                    "What's the predicted temperature for {city} on {date}?",
                ),
            ),
        ),
    ),
    _Tool(
        "search_notes",
        tuple(_Ask(f"note:{topic}", vtype, _NOTES_QUESTIONS) for topic, vtype in _NOTE_TOPICS),
    ),
    _Tool(
        "calendar",
        (
            _Ask("location:street", "street", _CALENDAR_WHERE),
            _Ask("location:cafe", "cafe", _CALENDAR_WHERE),
            _Ask(
                "time",
                "time",
                _t(
                    "calendar_when_ask",
                    "What time is the {title} on {date}?",
                    "When does the {title} on {date} start?",
                    "At what time is the {title} on {date}?",
                    "What's the start time of the {title} on {date}?",
                    "How early is the {title} on {date}?",
                ),
            ),
        ),
    ),
    _Tool(
        "get_contact",
        (
            _Ask(
                "phone",
                "phone",
                _t(
                    "contact_phone_ask",
                    "What is {n}'s phone number?",
                    "Which number do I call to reach {n}?",
                    "What's the phone number on {n}'s contact card?",
                    "Remind me of {n}'s number.",
                    "What number does my address book have for {n}?",
                ),
            ),
            _Ask(
                "city",
                "city",
                _t(
                    "contact_city_ask",
                    "Which city does {n} live in, according to my contacts?",
                    "What city is on {n}'s contact card?",
                    "Where is {n} based, per my address book?",
                    "What's the city in {n}'s contact details?",
                ),
            ),
        ),
    ),
)


# --- documents ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Doc:
    """A pasted document: its fields (value types), layouts and askable fields."""

    name: str
    fields: tuple[tuple[str, str], ...]
    layouts: Templates
    asks: tuple[_Ask, ...]


def _doc_asks(doc: str, **questions: tuple[str, Sequence[str]]) -> tuple[_Ask, ...]:
    return tuple(
        _Ask(field, vtype, _t(f"{doc}_{field}_ask", *texts))
        for field, (vtype, texts) in questions.items()
    )


_DOCS = (
    _Doc(
        "meeting",
        (
            ("project", "name"),
            ("mdate", "date"),
            ("attendee", "name"),
            ("launch", "date"),
            ("budget", "code"),
            ("venue", "cafe"),
        ),
        _t(
            "meeting_layout",
            "Meeting notes: {project} sync ({mdate})\nAttendees: {attendee} and me.\n"
            "- Launch moved to {launch}.\n- Budget code for the extra work: {budget}.\n"
            "- Team dinner booked at {venue}.\nAction items: {attendee} sends the summary.",
            "Notes from the {project} meeting on {mdate}. {attendee} joined us. We pushed the "
            "launch to {launch} and will charge the extra hours to budget code {budget}. To "
            "celebrate, dinner is at {venue}. Next steps are on {attendee}.",
            "{project} / {mdate}\nwho: {attendee}\nlaunch: {launch}\nbudget code: {budget}\n"
            "dinner: {venue}\nsummary by: {attendee}",
        ),
        _doc_asks(
            "meeting",
            launch=(
                "date",
                (
                    "According to the meeting notes, when is the launch?",
                    "What launch date did the {project} meeting settle on?",
                    "When was the launch moved to in the meeting notes?",
                    "What's the new launch date from the meeting notes?",
                ),
            ),
            budget=(
                "code",
                (
                    "What budget code was in the meeting notes?",
                    "Which budget code should the extra work go to, per the meeting notes?",
                    "What budget code did we agree on in the {project} meeting?",
                    "Remind me of the budget code from the meeting notes.",
                ),
            ),
            venue=(
                "cafe",
                (
                    "Where is the team dinner, according to the meeting notes?",
                    "Which place was the team dinner booked at?",
                    "Where did the meeting notes say dinner is?",
                    "What venue is the {project} team dinner at?",
                ),
            ),
            attendee=(
                "name",
                (
                    "Who sends the summary after the {project} meeting?",
                    "Who joined me at the meeting in my notes?",
                    "According to the meeting notes, who owns the action items?",
                    "Who was the attendee in the meeting notes?",
                ),
            ),
        ),
    ),
    _Doc(
        "recipe",
        (("dish", "food"), ("author", "name"), ("origin", "cafe")),
        _t(
            "recipe_layout",
            "Recipe card: {dish}\nFrom {author}'s notebook (adapted from the one at {origin}).\n"
            "1. Prep everything first.\n2. Cook low and slow.\n3. Season at the end, serve warm.",
            "{author} gave me this recipe for {dish}. It's based on what they serve at {origin}. "
            "You chop, simmer for a while, and finish with lemon and herbs. Serves a crowd.",
            "RECIPE: {dish}\nSource: {author} (original from {origin})\n"
            "Steps: soak, simmer, season, rest.\nNotes: better the next day.",
        ),
        _doc_asks(
            "recipe",
            dish=(
                "food",
                (
                    "What dish was the recipe card for?",
                    "Which dish did the recipe I pasted make?",
                    "What was the recipe I saved?",
                    "Name the dish from the recipe I gave you.",
                ),
            ),
            author=(
                "name",
                (
                    "Whose recipe was the one I pasted?",
                    "Who gave me the recipe?",
                    "From whose notebook is the recipe?",
                    "Who is the source of the recipe I saved?",
                ),
            ),
            origin=(
                "cafe",
                (
                    "Which place was the recipe adapted from?",
                    "Where does the original version of the recipe come from?",
                    "The recipe is based on a dish from where?",
                    "Which café or restaurant inspired the recipe?",
                ),
            ),
        ),
    ),
    _Doc(
        "itinerary",
        (
            ("destination", "city"),
            ("flight", "flight"),
            ("depart", "date"),
            ("hotel", "hotel"),
            ("booking", "order_id"),
        ),
        _t(
            "itinerary_layout",
            "Trip itinerary: {destination}\nOutbound: flight {flight} on {depart}\n"
            "Hotel: {hotel}\nBooking reference: {booking}\nRemember: passport and adapters.",
            "Travel plan: I'm flying to {destination} on {depart} with flight {flight}. We're "
            "staying at {hotel}, booking reference {booking}. Check-in is after three.",
            "ITINERARY\n- Destination: {destination}\n- Date: {depart}\n- Flight: {flight}\n"
            "- Stay: {hotel} (ref {booking})",
        ),
        _doc_asks(
            "itinerary",
            flight=(
                "flight",
                (
                    "What's the flight number in my itinerary?",
                    "Which flight am I taking according to the itinerary?",
                    "What flight does my travel plan have?",
                    "Remind me of the itinerary's flight number.",
                ),
            ),
            depart=(
                "date",
                (
                    "When do I leave, according to my itinerary?",
                    "What departure date is in my travel plan?",
                    "On which date is the outbound flight in my itinerary?",
                    "What's the travel date on the itinerary?",
                ),
            ),
            hotel=(
                "hotel",
                (
                    "Which hotel am I staying at on the trip?",
                    "What's the hotel in my itinerary?",
                    "Where am I staying, per the travel plan?",
                    "Name the hotel from my itinerary.",
                ),
            ),
            booking=(
                "order_id",
                (
                    "What's the hotel booking reference in my itinerary?",
                    "Which booking reference did the travel plan have?",
                    "Remind me of the itinerary's booking reference.",
                    "What reference number is the hotel booked under?",
                ),
            ),
            destination=(
                "city",
                (
                    "Where is the trip in my itinerary going?",
                    "What's the destination on my itinerary?",
                    "Which city am I flying to, according to the travel plan?",
                    "What city does the itinerary take me to?",
                ),
            ),
        ),
    ),
    _Doc(
        "flat",
        (("address", "street"), ("landlord", "name"), ("door", "code"), ("wifi", "password")),
        _t(
            "flat_layout",
            "Flat handover notes\nAddress: {address}\nLandlord: {landlord}\n"
            "Front door code: {door}\nWi-Fi password: {wifi}\nBins go out on Sunday night.",
            "Notes for the new flat: it's at {address}. The landlord is {landlord}, very "
            "responsive. The front door code is {door} and the Wi-Fi password is {wifi}.",
            "NEW FLAT\n{address}\nlandlord: {landlord}\ndoor: {door}\nwifi: {wifi}",
        ),
        _doc_asks(
            "flat",
            address=(
                "street",
                (
                    "What's the address of the new flat?",
                    "Where is the new flat, according to the handover notes?",
                    "Which street is the new flat on?",
                    "What address did the flat notes give?",
                ),
            ),
            landlord=(
                "name",
                (
                    "Who is the landlord of the new flat?",
                    "What's the new flat's landlord called?",
                    "Which name did the flat notes give for the landlord?",
                    "Who do I contact as landlord for the new flat?",
                ),
            ),
            door=(
                "code",
                (
                    "What's the front door code of the new flat?",
                    "Which code opens the new flat's front door?",
                    "What door code did the flat notes have?",
                    "Remind me of the front door code from the handover notes.",
                ),
            ),
            wifi=(
                "password",
                (
                    "What's the Wi-Fi password at the new flat?",
                    "Which Wi-Fi password did the flat notes give?",
                    "What do I type to get on the new flat's Wi-Fi?",
                    "Remind me of the new flat's Wi-Fi password.",
                ),
            ),
        ),
    ),
    _Doc(
        "storage",
        (("unit", "code"), ("keyholder", "name"), ("keystreet", "street"), ("pickup", "date")),
        _t(
            "storage_layout",
            "Memo: storage\nUnit number: {unit}\nSpare key: {keyholder}, {keystreet}\n"
            "Pick-up date: {pickup}\nBring tape and a trolley.",
            "Reminder for myself: the storage unit is number {unit}. {keyholder} has the spare "
            "key and lives at {keystreet}. I need to collect everything on {pickup}.",
            "storage memo\nunit {unit} / key with {keyholder} ({keystreet}) / collect {pickup}",
        ),
        _doc_asks(
            "storage",
            unit=(
                "code",
                (
                    "What's the storage unit number from my memo?",
                    "Which unit is my storage, according to the memo?",
                    "What number is the storage unit?",
                    "Remind me of the storage unit number.",
                ),
            ),
            keyholder=(
                "name",
                (
                    "Who has the spare key to the storage unit?",
                    "According to the storage memo, who keeps the spare key?",
                    "Whose place is the storage key at?",
                    "Who should I ask for the storage unit key?",
                ),
            ),
            keystreet=(
                "street",
                (
                    "Where does the person with the storage key live?",
                    "What address is the spare storage key at?",
                    "Which street do I go to for the storage key?",
                    "Where is the spare key for the storage unit kept?",
                ),
            ),
            pickup=(
                "date",
                (
                    "When do I need to collect things from storage?",
                    "What's the pick-up date in the storage memo?",
                    "On which date do I empty the storage unit?",
                    "When is the storage pick-up?",
                ),
            ),
        ),
    ),
)


# --- building one episode -----------------------------------------------------------------


@dataclass(frozen=True)
class _Draft:
    """A message being built, with the tracked values it is meant to contain."""

    role: str
    content: str
    values: frozenset[str]
    source: str


# A tool interaction's messages, the fields its questions need, extra values they mention.
_ToolOut = tuple[list[_Draft], dict[str, str], frozenset[str]]


class _Rejected(Exception):
    """A draw went wrong (a value turned up where it should not); the episode is redrawn."""


class _Drawer:
    """Draws distinct values; with ``candidates`` set, from the curriculum's first values."""

    def __init__(self, split: str, candidates: int | None, pool_seed: int) -> None:
        self.split, self.candidates, self.pool_seed = split, candidates, pool_seed

    def draw(self, rng: random.Random, value_type: str, used: Sequence[str]) -> str:
        if self.candidates is not None:
            pool = candidate_values(value_type, self.split, self.pool_seed, self.candidates)
            for _ in range(32):
                value = rng.choice(pool)
                if not _clashes(value, used):
                    return value
            free = [v for v in pool if not _clashes(v, used)]
            if free:
                return rng.choice(free)
            # Too few distinct candidates for this episode: distractors come from the open pool.
        pool_all = value_pool(value_type, self.split)
        for _ in range(1_000):
            value = pool_all.sample(rng)
            if not _clashes(value, used):
                return value
        raise _Rejected(f"no {value_type} value fits")


def _clashes(value: str, used: Iterable[str]) -> bool:
    """Whether ``value`` and an already used value contain one another (would make the
    answer ambiguous or appear where it should not)."""
    return any(value in other or other in value for other in used)


class _Builder:
    """One episode's draws, messages and bookkeeping."""

    def __init__(
        self,
        rng: random.Random,
        split: str,
        drawer: _Drawer,
        value_types: frozenset[str] | None = None,
    ) -> None:
        self.rng, self.split, self.drawer = rng, split, drawer
        self.value_types = value_types
        self.values: list[str] = []
        self.keys: set[str] = set()

    # values and text
    def draw(self, value_type: str) -> str:
        value = self.drawer.draw(self.rng, value_type, self.values)
        self.values.append(value)
        return value

    def reserve(self, key: str) -> bool:
        if key in self.keys:
            return False
        self.keys.add(key)
        return True

    def pick(self, templates: Templates) -> str:
        return templates.pick(self.rng, self.split)

    def message(
        self,
        role: str,
        templates: Templates,
        fields: Mapping[str, str] | None = None,
        *,
        prefix: str = "",
        suffix: str = "",
        extra: Iterable[str] = (),
    ) -> _Draft:
        """A message from a template; tracked values filled in are the ones it should hold."""
        fields = fields or {}
        template = self.pick(templates)
        tracked = set(self.values)
        values = {fields[n] for n in _placeholders(template) if fields[n] in tracked}
        text = prefix + template.format_map(fields) + suffix
        return _Draft(role, text, frozenset(values | set(extra)), role)

    def turn(self, pair: tuple[Templates, Templates], fields: Mapping[str, str]) -> list[_Draft]:
        return [self.message("user", pair[0], fields), self.message("assistant", pair[1])]

    def chatter(self) -> list[_Draft]:
        rng = self.rng
        opinion = rng.choice(_OPINIONS)
        fields = {
            "weather": rng.choice(_WEATHER),
            "activity": rng.choice(_ACTIVITIES),
            "time": rng.choice(_TIMES),
            "place": rng.choice(_PLACES),
            "feeling": rng.choice(_FEELINGS),
            "event": rng.choice(_EVENTS),
            "topic": rng.choice(_TOPICS),
            "thing": rng.choice(_THINGS),
            "opinion": opinion,
            "Opinion": opinion.capitalize(),
            "meal": rng.choice(_MEALS),
        }
        return self.turn(rng.choice(_CHATTER), fields)

    def ack(self, value: str | None) -> _Draft:
        if value is not None and self.rng.random() < 0.25:
            return self.message("assistant", _ECHO_ACKS, {"v": value})
        return self.message("assistant", _ACKS)

    def statement(
        self, templates: Templates, fields: Mapping[str, str], value: str
    ) -> list[_Draft]:
        prefix = self.pick(_LEAD_INS) if self.rng.random() < 0.3 else ""
        return [self.message("user", templates, fields, prefix=prefix), self.ack(value)]

    def question(
        self, templates: Templates, fields: Mapping[str, str], extra: Iterable[str] = ()
    ) -> _Draft:
        prefix = self.pick(_QUESTION_LEADS) if self.rng.random() < 0.25 else ""
        return self.message("user", templates, fields, prefix=prefix, extra=extra)

    # facts
    def slot(self, family: _Family | None = None) -> _Slot:
        for _ in range(200):
            fam = family or self.rng.choice(_FAMILIES)
            qual, value_type = self.rng.choice(fam.quals)
            if self.value_types is not None and value_type not in self.value_types:
                continue
            slot = _Slot(fam, qual, value_type)
            if self.reserve(slot.key):
                return slot
        raise _Rejected("no free slot")

    def slot_fact(self, slot: _Slot, value: str) -> list[_Draft]:
        return self.statement(slot.family.state, {**slot.fields, "v": value}, value)

    def person_fact(self, attr: _PersonAttr, person: str, value: str) -> list[_Draft]:
        self.reserve(f"person:{person}:{attr.name}")
        return self.statement(attr.state, {"n": person, "v": value}, value)

    def distractor_fact(self) -> list[_Draft]:
        """Another fact: mostly a personal slot, sometimes a fact about a third person."""
        if self.rng.random() < 0.25:
            attr = self.rng.choice(_PERSON_ATTRS)
            person = self.draw("name")
            return self.person_fact(attr, person, self.draw(attr.value_type))
        slot = self.slot()
        return self.slot_fact(slot, self.draw(slot.value_type))

    # tools
    def tool_call(self, name: str, arguments: dict[str, str]) -> _Draft:
        preface = self.pick(_TOOL_PREFACES)
        text = f"{preface}\n{format_tool_call(name, arguments)}"
        return _Draft("assistant", text, frozenset(arguments.values()), "assistant")

    def tool_result(self, name: str, result: dict[str, Any], values: Iterable[str]) -> _Draft:
        text = json.dumps(result, ensure_ascii=False)
        return _Draft("tool", text, frozenset(values), f"tool:{name}")

    def tool_use(self, tool: _Tool, preset: Mapping[str, str]) -> _ToolOut:
        """One tool interaction (request, call, result, follow-up); returns it with the fields
        and extra tracked values its questions need. ``preset`` fixes some result values."""
        build = getattr(self, f"_tool_{tool.name}")
        unit, qfields, qextra = build(preset)
        return [*unit, self.message("assistant", _TOOL_FOLLOWUPS)], qfields, qextra

    def _tool_lookup_order(self, preset: Mapping[str, str]) -> _ToolOut:
        tracking = preset.get("tracking") or self.draw("tracking")
        delivery = preset.get("delivery") or self.draw("date")
        order = self.draw("order_id")
        result = {
            "order": order,
            "status": self.rng.choice(_ORDER_STATUSES),
            "carrier": self.rng.choice(_CARRIERS),
            "tracking_number": tracking,
            "estimated_delivery": delivery,
        }
        unit = [
            self.message("user", _ORDER_REQUEST, {"order": order}),
            self.tool_call("lookup_order", {"order": order}),
            self.tool_result("lookup_order", result, (order, tracking, delivery)),
        ]
        return unit, {"order": order}, frozenset()

    def _tool_get_weather(self, preset: Mapping[str, str]) -> _ToolOut:
        temperature = preset.get("temperature") or self.draw("temperature")
        city, date = self.draw("city"), self.draw("date")
        if not self.reserve(f"weather:{city}:{date}"):
            raise _Rejected("weather asked twice")
        result = {
            "city": city,
            "date": date,
            "condition": self.rng.choice(_CONDITIONS),
            "temperature": temperature,
        }
        fields = {"city": city, "date": date}
        unit = [
            self.message("user", _WEATHER_REQUEST, fields),
            self.tool_call("get_weather", fields),
            self.tool_result("get_weather", result, (city, date, temperature)),
        ]
        return unit, fields, frozenset()

    def _tool_search_notes(self, preset: Mapping[str, str]) -> _ToolOut:
        asked = [k.removeprefix("note:") for k in preset if k.startswith("note:")]
        free = [t for t in _NOTE_TOPICS if f"notes:{t[0]}" not in self.keys]
        topics = [next(t for t in _NOTE_TOPICS if t[0] == asked[0])] if asked else []
        others = [t for t in free if t not in topics]
        self.rng.shuffle(others)
        topics += others[: self.rng.randint(0, 1) if topics else self.rng.randint(1, 2)]
        if not topics:
            raise _Rejected("no free note topic")
        results, values = [], []
        for topic, value_type in topics:
            if not self.reserve(f"notes:{topic}"):
                raise _Rejected("note topic used twice")
            value = preset.get(f"note:{topic}") or self.draw(value_type)
            fields = {"topic": topic, "Topic": topic[0].upper() + topic[1:], "v": value}
            snippet = self.pick(_NOTE_SNIPPETS).format_map(fields)
            results.append({"title": self.rng.choice(_NOTE_TITLES), "snippet": snippet})
            values.append(value)
        self.rng.shuffle(results)
        topic = topics[0][0]
        unit = [
            self.message("user", _NOTES_REQUEST, {"topic": topic}),
            self.tool_call("search_notes", {"query": topic}),
            self.tool_result("search_notes", {"results": results}, values),
        ]
        return unit, {"topic": topic}, frozenset()

    def _tool_calendar(self, preset: Mapping[str, str]) -> _ToolOut:
        location_type = next(
            (k.split(":")[1] for k in preset if k.startswith("location:")),
            self.rng.choice(("street", "cafe")),
        )
        location = preset.get(f"location:{location_type}") or self.draw(location_type)
        start = preset.get("time") or self.draw("time")
        date = self.draw("date")
        titles = self.rng.sample(_EVENT_TITLES, self.rng.randint(1, 3))
        events, values, asked_title, asked_extra = [], [date, location, start], "", frozenset()
        for i, title_template in enumerate(titles):
            if not self.reserve(f"calendar:{date}:{title_template}"):
                raise _Rejected("calendar event used twice")
            names = {"n": self.draw("name")} if "{n}" in title_template else {}
            title = title_template.format_map(names)
            if i == 0:
                where, when = location, start
                asked_title, asked_extra = title, frozenset(names.values())
            else:
                where = self.draw(self.rng.choice(("street", "cafe")))
                when = self.draw("time")
                values += [where, when]
            values += names.values()
            events.append({"time": when, "title": title, "location": where})
        self.rng.shuffle(events)
        unit = [
            self.message("user", _CALENDAR_REQUEST, {"date": date}),
            self.tool_call("calendar", {"date": date}),
            self.tool_result("calendar", {"date": date, "events": events}, values),
        ]
        return unit, {"date": date, "title": asked_title}, asked_extra

    def _tool_get_contact(self, preset: Mapping[str, str]) -> _ToolOut:
        phone = preset.get("phone") or self.draw("phone")
        city = preset.get("city") or self.draw("city")
        person = self.draw("name")
        self.reserve(f"contact:{person}")
        result = {"name": person, "phone": phone, "city": city}
        unit = [
            self.message("user", _CONTACT_REQUEST, {"n": person}),
            self.tool_call("get_contact", {"name": person}),
            self.tool_result("get_contact", result, (person, phone, city)),
        ]
        return unit, {"n": person}, frozenset()

    # documents
    def document(self, doc: _Doc, preset: Mapping[str, str]) -> tuple[list[_Draft], dict[str, str]]:
        if not self.reserve(f"doc:{doc.name}"):
            raise _Rejected("document used twice")
        fields = {f: preset.get(f) or self.draw(vtype) for f, vtype in doc.fields}
        intro = self.pick(_DOC_INTROS)
        user = self.message("user", doc.layouts, fields, prefix=intro + "\n\n")
        return [user, self.message("assistant", _DOC_ACKS)], fields

    # assembly
    def assemble(
        self, units: list[list[_Draft]], distractors: tuple[int, int], before: tuple[int, int]
    ) -> list[_Draft]:
        """Facts in a random order (unit ``before[0]`` ahead of ``before[1]``) with chatter in
        every gap and greetings opening new sessions."""
        rng = self.rng
        order = list(range(len(units)))
        rng.shuffle(order)
        first, second = before
        if first != second and order.index(first) > order.index(second):
            i, j = order.index(first), order.index(second)
            order[i], order[j] = order[j], order[i]
        sessions = set(rng.sample(range(1, len(units) + 1), rng.randint(0, min(3, len(units)))))
        if rng.random() < 0.5:
            sessions.add(0)
        out: list[_Draft] = []
        for gap in range(len(units) + 1):
            if gap in sessions:
                out += self.turn(_GREETINGS, {})
            for _ in range(rng.randint(*distractors)):
                out += self.chatter()
            if gap < len(units):
                out += units[order[gap]]
        return out

    def check(self, drafts: Sequence[_Draft]) -> None:
        """Every tracked value occurs exactly in the messages meant to hold it."""
        for draft in drafts:
            for value in self.values:
                present = value in draft.content
                if present and value not in draft.values:
                    raise _Rejected(f"{value!r} leaks into {draft.content!r}")
                if not present and value in draft.values:
                    raise RuntimeError(f"template bug: {value!r} missing from {draft.content!r}")


@dataclass
class _Plan:
    units: list[list[_Draft]]
    question: _Draft
    answer: str
    meta: dict[str, str]
    num_facts: int
    before: tuple[int, int] = (0, 0)


def _plan_facts(b: _Builder, num_facts: int) -> _Plan:
    target = b.slot()
    value = b.draw(target.value_type)
    units = [b.slot_fact(target, value)]
    if num_facts > 1 and len(target.family.quals) > 1 and b.rng.random() < 0.5:
        sibling = b.slot(target.family)  # a near miss: "my brother" next to "my sister"
        units.append(b.slot_fact(sibling, b.draw(sibling.value_type)))
    while len(units) < num_facts:
        units.append(b.distractor_fact())
    question = b.question(target.family.ask, target.fields)
    meta = {"key": target.key, "value_type": target.value_type, "value": value}
    return _Plan(units, question, value, meta, num_facts)


def _plan_update(b: _Builder, num_facts: int) -> _Plan:
    target = b.slot()
    new = b.draw(target.value_type)
    old = b.draw(target.value_type)
    update_fields = {**target.fields, "v": new, "old": old}
    update = b.statement(target.family.update, update_fields, new)
    units = [b.slot_fact(target, old), update]
    while len(units) < num_facts + 1:
        units.append(b.distractor_fact())
    question = b.question(target.family.ask, target.fields)
    meta = {"key": target.key, "value_type": target.value_type, "value": new, "old_value": old}
    return _Plan(units, question, new, meta, num_facts, before=(0, 1))


def _plan_two_hop(b: _Builder, num_facts: int) -> _Plan:
    num_facts = max(2, num_facts)
    relation = b.slot(_RELATION)
    attr = b.rng.choice(_PERSON_ATTRS)
    answer = b.draw(attr.value_type)
    bridge = b.draw("name")
    units = [b.slot_fact(relation, bridge), b.person_fact(attr, bridge, answer)]
    other_person: str | None = None
    for extra in ("other_relation", "same_attr_other", "bridge_other_attr"):
        if len(units) >= num_facts:
            break
        if extra == "other_relation":
            other_relation = b.slot(_RELATION)
            other_person = b.draw("name")
            units.append(b.slot_fact(other_relation, other_person))
        elif extra == "same_attr_other":
            person = other_person or b.draw("name")
            units.append(b.person_fact(attr, person, b.draw(attr.value_type)))
        else:
            other_attr = b.rng.choice([a for a in _PERSON_ATTRS if a is not attr])
            units.append(b.person_fact(other_attr, bridge, b.draw(other_attr.value_type)))
    while len(units) < num_facts:
        units.append(b.distractor_fact())
    question = b.question(attr.ask, relation.fields)
    meta = {
        "key": f"{relation.key}>{attr.name}",
        "value_type": attr.value_type,
        "value": answer,
        "bridge": bridge,
    }
    return _Plan(units, question, answer, meta, num_facts)


def _plan_agent(b: _Builder, num_facts: int) -> _Plan:
    tool = b.rng.choice(_TOOLS)
    ask = b.rng.choice(tool.asks)
    answer = b.draw(ask.value_type)
    unit, qfields, qextra = b.tool_use(tool, {ask.field: answer})
    units = [unit]
    while len(units) < num_facts:
        if b.rng.random() < 0.5:
            units.append(b.tool_use(b.rng.choice(_TOOLS), {})[0])
        else:
            units.append(b.distractor_fact())
    question = b.question(ask.questions, qfields, qextra)
    meta = {
        "key": f"{tool.name}:{ask.field}",
        "value_type": ask.value_type,
        "value": answer,
        "tool": tool.name,
    }
    return _Plan(units, question, answer, meta, num_facts)


def _plan_document(b: _Builder, num_facts: int) -> _Plan:
    doc = b.rng.choice(_DOCS)
    ask = b.rng.choice(doc.asks)
    answer = b.draw(ask.value_type)
    unit, fields = b.document(doc, {ask.field: answer})
    units = [unit]
    while len(units) < num_facts:
        free = [d for d in _DOCS if f"doc:{d.name}" not in b.keys]
        if free and b.rng.random() < 0.3:
            units.append(b.document(b.rng.choice(free), {})[0])
        else:
            units.append(b.distractor_fact())
    question = b.question(ask.questions, fields)
    meta = {
        "key": f"doc:{doc.name}:{ask.field}",
        "value_type": ask.value_type,
        "value": answer,
        "doc": doc.name,
    }
    return _Plan(units, question, answer, meta, num_facts)


def _plan_absent(b: _Builder, num_facts: int) -> _Plan:
    """Facts are stated; the question targets a slot that never was, often a near miss (the
    brother when the sister was named, a relation's city when only the name was given)."""
    rng = b.rng
    units: list[list[_Draft]] = []
    roll = rng.random()
    if roll < 0.2:  # a relation is named, its attribute is asked
        relation = b.slot(_RELATION)
        units.append(b.slot_fact(relation, b.draw("name")))
        attr = rng.choice(_PERSON_ATTRS)
        value = b.draw(attr.value_type)
        question = b.question(attr.ask, relation.fields)
        meta = {"key": f"{relation.key}>{attr.name}", "value_type": attr.value_type}
    else:
        stated = [b.slot() for _ in range(num_facts)]
        units += [b.slot_fact(s, b.draw(s.value_type)) for s in stated]
        near = [s.family for s in stated if len(s.family.quals) > 1]
        family = rng.choice(near) if near and roll < 0.6 else None
        asked = b.slot(family)
        value = b.draw(asked.value_type)
        question = b.question(asked.family.ask, asked.fields)
        meta = {"key": asked.key, "value_type": asked.value_type}
    while len(units) < num_facts:
        units.append(b.distractor_fact())
    meta["value"] = value  # what the answer would have been: never written
    return _Plan(units, question, NO_INFORMATION, meta, num_facts)


_PLANNERS: dict[str, Callable[[_Builder, int], _Plan]] = {
    "facts": _plan_facts,
    "update": _plan_update,
    "two_hop": _plan_two_hop,
    "agent": _plan_agent,
    "document": _plan_document,
    "absent": _plan_absent,
}


def _episode(
    index: int,
    kind: str,
    num_facts: int,
    *,
    split: str,
    seed: int,
    distractors: tuple[int, int],
    drawer: _Drawer,
    value_types: frozenset[str] | None = None,
) -> Episode:
    rng = random.Random(f"deltamem-episode:{split}:{seed}:{index}")
    problem = ""
    for _ in range(100):
        builder = _Builder(rng, split, drawer, value_types)
        try:
            plan = _PLANNERS[kind](builder, num_facts)
            drafts = builder.assemble(plan.units, distractors, plan.before)
            builder.check([*drafts, plan.question])
        except _Rejected as err:
            problem = str(err)
            continue
        return Episode(
            id=f"{split}-{seed}-{index:06d}",
            split=split,
            kind=kind,
            num_facts=plan.num_facts,
            messages=tuple(
                Message(role=d.role, content=d.content, source=d.source) for d in drafts
            ),
            question=plan.question.content,
            answer=plan.answer,
            meta=plan.meta,
        )
    raise RuntimeError(f"could not build a {kind} episode (last problem: {problem})")


def generate_episodes(
    n: int,
    *,
    split: str = TRAIN,
    seed: int = 0,
    num_facts: int | Sequence[int] = (1, 2, 4, 8),
    kinds: Sequence[str] | None = None,
    distractors: int | tuple[int, int] = (1, 4),
    candidates: int | None = None,
    pool_seed: int = 0,
    value_types: Sequence[str] | None = None,
) -> list[Episode]:
    """``n`` synthetic episodes, a pure function of the arguments.

    Kinds × numbers of facts are cycled (from a seed-dependent start, so small batches are
    not biased to the first kinds); episode ``i`` depends only on (split, seed, i, its kind and
    number of facts). ``num_facts`` counts stored facts (a statement with its later update, a
    tool result or a document counts as one; ``two_hop`` needs ≥ 2). ``distractors``: chatter
    turns in each gap between facts. ``candidates``: the curriculum knob — answers (and other
    values, while enough distinct ones are left) come from the first ``candidates`` values of
    each type's pool shuffled by ``pool_seed`` (`candidate_values`); kept separate from
    ``seed`` so the candidate set stays the same while a trainer varies the seed per step.
    None = the whole open pool. ``value_types``: only personal-fact slots whose value is of
    one of these types (`VALUE_TYPES`) are used, e.g. to train on word-like values first;
    None = all types.
    """
    _check_split(split)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    kinds = tuple(KINDS if kinds is None else kinds)
    unknown = [k for k in kinds if k not in _PLANNERS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    facts = (num_facts,) if isinstance(num_facts, int) else tuple(num_facts)
    if not facts or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in facts):
        raise ValueError(f"num_facts must be ints ≥ 1, got {num_facts!r}")
    low, high = (distractors, distractors) if isinstance(distractors, int) else distractors
    if not 0 <= low <= high:
        raise ValueError(f"distractors must be n ≥ 0 or (low, high), got {distractors!r}")
    if candidates is not None and candidates < 1:
        raise ValueError(f"candidates must be ≥ 1 or None, got {candidates}")
    allowed = _check_value_types(value_types)
    drawer = _Drawer(split, candidates, pool_seed)
    start = random.Random(f"deltamem-order:{split}:{seed}").randrange(len(kinds) * len(facts))
    episodes = []
    for i in range(n):
        combo = start + i
        kind = kinds[combo % len(kinds)]
        count = facts[(combo // len(kinds)) % len(facts)]
        episodes.append(
            _episode(
                i,
                kind,
                count,
                split=split,
                seed=seed,
                distractors=(low, high),
                drawer=drawer,
                value_types=allowed,
            )
        )
    return episodes


def _check_value_types(value_types: Sequence[str] | None) -> frozenset[str] | None:
    if value_types is None:
        return None
    allowed = frozenset(value_types)
    unknown = sorted(allowed - set(VALUE_TYPES))
    if not allowed or unknown:
        raise ValueError(
            f"value_types must be a non-empty subset of {VALUE_TYPES}, got {list(value_types)}"
        )
    slot_types = {value_type for fam in _FAMILIES for _, value_type in fam.quals}
    if not allowed & slot_types:
        raise ValueError(f"no personal-fact slot holds a value of type {sorted(allowed)}")
    return allowed


def swap_partners(episodes: Sequence[Episode]) -> list[int]:
    """For each episode, the index of another whose state stands in as the *swapped* control.

    The partner has the same number of facts and, where possible, an answer of the same value
    type: a colour question read with another colour memory differs only in the stored value,
    so the control measures content, not the kind of thing stored."""
    partners = []
    for i, episode in enumerate(episodes):
        others = [(i + step) % len(episodes) for step in range(1, len(episodes))]
        same_count = [j for j in others if episodes[j].num_facts == episode.num_facts]
        value_type = episode.meta.get("value_type")
        same_type = [j for j in same_count if episodes[j].meta.get("value_type") == value_type]
        partners.append((same_type or same_count or [i])[0])
    return partners


# --- files --------------------------------------------------------------------------------


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
    _check_split(split)
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
        raise ValueError(_describe(err)) from None


# --- command line -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem data`` options."""
    parser.add_argument("--out", required=True, help="output JSONL path")
    parser.add_argument("--n", type=int, default=1000, help="number of episodes")
    parser.add_argument("--split", choices=SPLITS, default=TRAIN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-facts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=None)
    parser.add_argument(
        "--value-types",
        nargs="+",
        choices=VALUE_TYPES,
        default=None,
        help="only personal facts with values of these types",
    )
    parser.add_argument("--candidates", type=int, default=None, help="default: open pool")
    parser.add_argument("--pool-seed", type=int, default=0, help="shuffle of the candidates")
    parser.add_argument(
        "--distractors", type=int, nargs="+", default=[1, 4], metavar="N", help="N or LOW HIGH"
    )
    return parser


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Generate and write the episodes ``args`` ask for (errors go through ``parser``)."""
    if len(args.distractors) > 2:
        parser.error("--distractors takes N or LOW HIGH")
    low, high = args.distractors[0], args.distractors[-1]
    try:
        episodes = generate_episodes(
            args.n,
            split=args.split,
            seed=args.seed,
            num_facts=args.num_facts,
            kinds=args.kinds,
            distractors=(low, high),
            candidates=args.candidates,
            pool_seed=args.pool_seed,
            value_types=args.value_types,
        )
    except ValueError as err:
        parser.error(str(err))
    count = write_jsonl(episodes, args.out)
    print(f"wrote {count} {args.split} episodes to {args.out}")


def main(argv: list[str] | None = None) -> None:
    """``deltamem data``: write synthetic episodes as JSONL."""
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="deltamem data", description="Generate synthetic δ-mem episodes as JSONL."
        )
    )
    run_from_args(parser.parse_args(argv), parser)


if __name__ == "__main__":
    main()
