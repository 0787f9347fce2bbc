"""The phrasings of episodes: template families, fact families, tools and documents.

Every template family holds out some of its templates (`template_sets`): held-out episodes are
phrased only with those, training episodes never use them. Families register on import, so
this module holds all of them (the registry is complete once it is imported).
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

from .schema import HELDOUT, check_split

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
    check_split(split)
    return {
        name: family.heldout if split == HELDOUT else family.train
        for name, family in _REGISTRY.items()
    }


def placeholders(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


# Statements and their acknowledgements.
LEAD_INS = _t(
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
QUESTION_LEADS = _t(
    "question_lead",
    "Quick question: ",
    "Question for you. ",
    "Okay, memory test. ",
    "Help me out here. ",
    "I need to check something. ",
)
ACKS = _t(
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
ECHO_ACKS = _t(
    "ack_echo",
    "Noted: {v}.",
    "Got it, {v}.",
    "Okay, {v}. I'll remember.",
    "Saved: {v}.",
    "Thanks! {v}, noted.",
)
DOC_INTROS = _t(
    "doc_intro",
    "Here are my notes, can you keep them?",
    "Pasting this so I don't lose it:",
    "Save this for me, please:",
    "Keep this somewhere safe:",
    "Can you hold on to this?",
    "Found this in my drafts, storing it here:",
)
DOC_ACKS = _t(
    "doc_ack",
    "Saved. Let me know if you need anything from it.",
    "Got it, I've kept a copy.",
    "Thanks, I'll hold on to these notes.",
    "All stored.",
    "Okay, I have it.",
)
TOOL_PREFACES = _t(
    "tool_preface",
    "Let me check.",
    "One moment, looking that up.",
    "Sure, checking now.",
    "I'll look it up.",
    "On it.",
)
TOOL_FOLLOWUPS = _t(
    "tool_followup",
    "Done, I've pulled up the details.",
    "Got the result.",
    "That's what the system returned.",
    "All set, I have the details now.",
    "Okay, the lookup finished.",
)

# Chatter: (user templates, assistant replies) per topic; fillers contain no digits.
WEATHER = (
    "rainy", "sunny", "grey", "windy", "foggy", "freezing", "humid", "stormy", "mild", "drizzly",
    "snowy", "muggy",
)  # fmt: skip
ACTIVITIES = (
    "hiking", "baking bread", "learning the cello", "running by the river", "painting",
    "playing chess online", "gardening", "rock climbing", "reading old sci-fi", "fixing my bike",
    "knitting", "learning to juggle", "swimming laps", "making pottery", "birdwatching",
    "doing yoga", "trying a new board game", "cleaning out the garage", "sorting old photos",
    "practising calligraphy",
)  # fmt: skip
TIMES = (
    "this weekend", "tomorrow morning", "after work", "tonight", "next week", "on my day off",
    "later today", "some time soon",
)  # fmt: skip
PLACES = (
    "the park", "the market", "the library", "the beach", "the gym", "the old town",
    "the museum", "the garden centre",
)  # fmt: skip
FEELINGS = (
    "nervous", "excited", "unsure", "tired", "curious", "a bit stressed", "hopeful", "restless",
    "calm", "overwhelmed",
)  # fmt: skip
EVENTS = (
    "the presentation at work", "moving house", "my first half marathon", "the dinner party",
    "the exam", "the trip", "starting a new course", "the family reunion", "the team offsite",
    "the concert",
)  # fmt: skip
TOPICS = (
    "learning a new language", "keeping plants alive", "sleeping better", "cooking on a budget",
    "staying focused", "getting up earlier", "decluttering", "saving money", "writing more",
    "drinking less coffee",
)  # fmt: skip
THINGS = ("book", "podcast", "film", "series", "record", "documentary", "game")
OPINIONS = ("surprisingly good", "a bit slow", "really gripping", "weird but fun", "too long")
MEALS = ("soup", "pasta", "toast", "salad", "noodles", "pancakes", "stew", "rice")

CHATTER: tuple[tuple[Templates, Templates], ...] = (
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
GREETINGS = (
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
class Family:
    """A kind of personal fact; ``quals`` tell its slots apart ("sister", "cat", …) and give
    each slot's value type. One slot is stated at most once per episode (its ``key``)."""

    name: str
    state: Templates
    ask: Templates
    update: Templates
    quals: tuple[tuple[str, str], ...]
    field: str = ""


@dataclass(frozen=True)
class Slot:
    family: Family
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
RELATION = Family(
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
_PET = Family(
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
_LIVE_CITY = Family(
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
_HOMETOWN = Family(
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
_TRIP_CITY = Family(
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
_HOME_STREET = Family(
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
_OFFICE_STREET = Family(
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
_FAV_CAFE = Family(
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
_MEET_PLACE = Family(
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
_APPOINTMENT = Family(
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
_SPECIAL_DATE = Family(
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
_FAV_FOOD = Family(
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
_FAV_COLOUR = Family(
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
_FAV_BAND = Family(
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
_CODE = Family(
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
FAMILIES = (
    RELATION, _PET, _LIVE_CITY, _HOMETOWN, _TRIP_CITY, _HOME_STREET, _OFFICE_STREET, _FAV_CAFE,
    _MEET_PLACE, _APPOINTMENT, _SPECIAL_DATE, _FAV_FOOD, _FAV_COLOUR, _FAV_BAND, _CODE,
)  # fmt: skip


@dataclass(frozen=True)
class PersonAttr:
    """A fact about a third person ("{n} lives in {v}"), asked through a relation (two-hop)."""

    name: str
    value_type: str
    state: Templates
    ask: Templates


PERSON_ATTRS = (
    PersonAttr(
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
    PersonAttr(
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
    PersonAttr(
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
    PersonAttr(
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
    PersonAttr(
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
    PersonAttr(
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
class Tool:
    name: str
    asks: tuple[_Ask, ...]


ORDER_REQUEST = _t(
    "order_request",
    "Can you check on my order {order}?",
    "Where is my order {order}?",
    "Please look up order {order} for me.",
    "Any news on order {order}?",
    "What's happening with order {order}?",
)
WEATHER_REQUEST = _t(
    "weather_request",
    "What's the weather going to be like in {city} on {date}?",
    "Can you get the forecast for {city} on {date}?",
    "Check the weather in {city} for {date}, please.",
    "Will I need a jacket in {city} on {date}?",
    "Could you see what the forecast says for {city} on {date}?",
)
NOTES_REQUEST = _t(
    "notes_request",
    "Can you search my notes for the {topic}?",
    "Look through my notes for the {topic}, please.",
    "I wrote down the {topic} somewhere, can you find it?",
    "Find the {topic} in my notes.",
    "Search my notes, I need the {topic}.",
)
NOTE_SNIPPETS = _t(
    "note_snippet",
    "The {topic} is {v}.",
    "{Topic}: {v}",
    "Remember, the {topic} is {v}.",
    "Saved on the fridge: {topic} {v}.",
    "For next time, {topic} = {v}.",
)
CALENDAR_REQUEST = _t(
    "calendar_request",
    "What's on my calendar for {date}?",
    "Can you check my schedule on {date}?",
    "Do I have anything on {date}?",
    "Pull up my calendar for {date}, please.",
    "What does {date} look like for me?",
)
CONTACT_REQUEST = _t(
    "contact_request",
    "Can you look up {n}'s contact details?",
    "Find {n} in my contacts.",
    "I need {n}'s details, can you check?",
    "Get me the contact card for {n}.",
    "Pull up {n} from my address book.",
)
NOTE_TOPICS = (
    ("guest wifi password", "password"),
    ("garage door code", "code"),
    ("insurance policy number", "order_id"),
    ("plumber's phone number", "phone"),
    ("shed padlock combination", "code"),
    ("passport number", "order_id"),
    ("electricity meter number", "code"),
)
NOTE_TITLES = ("House stuff", "Misc", "Important", "Home admin", "To remember", "Scribbles")
ORDER_STATUSES = ("shipped", "in transit", "out for delivery", "processing", "delayed")
CARRIERS = ("ParcelPoint", "SwiftShip", "Northline Post", "BlueBox Freight", "Courier Nine")
CONDITIONS = ("light rain", "sunny", "overcast", "thunderstorms", "snow showers", "fog", "clear")
EVENT_TITLES = (
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
TOOLS = (
    Tool(
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
    Tool(
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
    Tool(
        "search_notes",
        tuple(_Ask(f"note:{topic}", vtype, _NOTES_QUESTIONS) for topic, vtype in NOTE_TOPICS),
    ),
    Tool(
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
    Tool(
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
class Doc:
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


DOCS = (
    Doc(
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
    Doc(
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
    Doc(
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
    Doc(
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
    Doc(
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
