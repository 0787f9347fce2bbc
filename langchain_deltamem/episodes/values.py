"""Value pools: the values episodes state and ask about.

Values come from large open pools (made-up names from syllables, random codes, made-up streets,
cafés and bands, dates…), and each value belongs to exactly one split, fixed by a hash of the
value itself (`value_pool`), so a held-out score never rewards a memorised value.
"""

from __future__ import annotations

import calendar
import functools
import random
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .schema import HELDOUT, TRAIN, check_split


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
        check_split(self.split)

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
