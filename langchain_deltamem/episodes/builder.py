"""Building episodes: `generate_episodes` plans each kind's facts, draws their values and
phrasings, and keeps an episode only if every value occurs exactly in the messages meant to hold
it; `swap_partners` pairs episodes for the swapped-state control."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..tool_calling import format_tool_call
from .schema import KINDS, NO_INFORMATION, TRAIN, Episode, Message, check_split
from .templates import (
    ACKS,
    ACTIVITIES,
    CALENDAR_REQUEST,
    CARRIERS,
    CHATTER,
    CONDITIONS,
    CONTACT_REQUEST,
    DOC_ACKS,
    DOC_INTROS,
    DOCS,
    ECHO_ACKS,
    EVENT_TITLES,
    EVENTS,
    FAMILIES,
    FEELINGS,
    GREETINGS,
    LEAD_INS,
    MEALS,
    NOTE_SNIPPETS,
    NOTE_TITLES,
    NOTE_TOPICS,
    NOTES_REQUEST,
    OPINIONS,
    ORDER_REQUEST,
    ORDER_STATUSES,
    PERSON_ATTRS,
    PLACES,
    QUESTION_LEADS,
    RELATION,
    THINGS,
    TIMES,
    TOOL_FOLLOWUPS,
    TOOL_PREFACES,
    TOOLS,
    TOPICS,
    WEATHER,
    WEATHER_REQUEST,
    Doc,
    Family,
    PersonAttr,
    Slot,
    Templates,
    Tool,
    placeholders,
)
from .values import VALUE_TYPES, candidate_values, value_pool


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
        values = {fields[n] for n in placeholders(template) if fields[n] in tracked}
        text = prefix + template.format_map(fields) + suffix
        return _Draft(role, text, frozenset(values | set(extra)), role)

    def turn(self, pair: tuple[Templates, Templates], fields: Mapping[str, str]) -> list[_Draft]:
        return [self.message("user", pair[0], fields), self.message("assistant", pair[1])]

    def chatter(self) -> list[_Draft]:
        rng = self.rng
        opinion = rng.choice(OPINIONS)
        fields = {
            "weather": rng.choice(WEATHER),
            "activity": rng.choice(ACTIVITIES),
            "time": rng.choice(TIMES),
            "place": rng.choice(PLACES),
            "feeling": rng.choice(FEELINGS),
            "event": rng.choice(EVENTS),
            "topic": rng.choice(TOPICS),
            "thing": rng.choice(THINGS),
            "opinion": opinion,
            "Opinion": opinion.capitalize(),
            "meal": rng.choice(MEALS),
        }
        return self.turn(rng.choice(CHATTER), fields)

    def ack(self, value: str | None) -> _Draft:
        if value is not None and self.rng.random() < 0.25:
            return self.message("assistant", ECHO_ACKS, {"v": value})
        return self.message("assistant", ACKS)

    def statement(
        self, templates: Templates, fields: Mapping[str, str], value: str
    ) -> list[_Draft]:
        prefix = self.pick(LEAD_INS) if self.rng.random() < 0.3 else ""
        return [self.message("user", templates, fields, prefix=prefix), self.ack(value)]

    def question(
        self, templates: Templates, fields: Mapping[str, str], extra: Iterable[str] = ()
    ) -> _Draft:
        prefix = self.pick(QUESTION_LEADS) if self.rng.random() < 0.25 else ""
        return self.message("user", templates, fields, prefix=prefix, extra=extra)

    # facts
    def slot(self, family: Family | None = None) -> Slot:
        for _ in range(200):
            fam = family or self.rng.choice(FAMILIES)
            qual, value_type = self.rng.choice(fam.quals)
            if self.value_types is not None and value_type not in self.value_types:
                continue
            slot = Slot(fam, qual, value_type)
            if self.reserve(slot.key):
                return slot
        raise _Rejected("no free slot")

    def slot_fact(self, slot: Slot, value: str) -> list[_Draft]:
        return self.statement(slot.family.state, {**slot.fields, "v": value}, value)

    def person_fact(self, attr: PersonAttr, person: str, value: str) -> list[_Draft]:
        self.reserve(f"person:{person}:{attr.name}")
        return self.statement(attr.state, {"n": person, "v": value}, value)

    def distractor_fact(self) -> list[_Draft]:
        """Another fact: mostly a personal slot, sometimes a fact about a third person."""
        if self.rng.random() < 0.25:
            attr = self.rng.choice(PERSON_ATTRS)
            person = self.draw("name")
            return self.person_fact(attr, person, self.draw(attr.value_type))
        slot = self.slot()
        return self.slot_fact(slot, self.draw(slot.value_type))

    # tools
    def tool_call(self, name: str, arguments: dict[str, str]) -> _Draft:
        preface = self.pick(TOOL_PREFACES)
        text = f"{preface}\n{format_tool_call(name, arguments)}"
        return _Draft("assistant", text, frozenset(arguments.values()), "assistant")

    def tool_result(self, name: str, result: dict[str, Any], values: Iterable[str]) -> _Draft:
        text = json.dumps(result, ensure_ascii=False)
        return _Draft("tool", text, frozenset(values), f"tool:{name}")

    def tool_use(self, tool: Tool, preset: Mapping[str, str]) -> _ToolOut:
        """One tool interaction (request, call, result, follow-up); returns it with the fields
        and extra tracked values its questions need. ``preset`` fixes some result values."""
        build = getattr(self, f"_tool_{tool.name}")
        unit, qfields, qextra = build(preset)
        return [*unit, self.message("assistant", TOOL_FOLLOWUPS)], qfields, qextra

    def _tool_lookup_order(self, preset: Mapping[str, str]) -> _ToolOut:
        tracking = preset.get("tracking") or self.draw("tracking")
        delivery = preset.get("delivery") or self.draw("date")
        order = self.draw("order_id")
        result = {
            "order": order,
            "status": self.rng.choice(ORDER_STATUSES),
            "carrier": self.rng.choice(CARRIERS),
            "tracking_number": tracking,
            "estimated_delivery": delivery,
        }
        unit = [
            self.message("user", ORDER_REQUEST, {"order": order}),
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
            "condition": self.rng.choice(CONDITIONS),
            "temperature": temperature,
        }
        fields = {"city": city, "date": date}
        unit = [
            self.message("user", WEATHER_REQUEST, fields),
            self.tool_call("get_weather", fields),
            self.tool_result("get_weather", result, (city, date, temperature)),
        ]
        return unit, fields, frozenset()

    def _tool_search_notes(self, preset: Mapping[str, str]) -> _ToolOut:
        asked = [k.removeprefix("note:") for k in preset if k.startswith("note:")]
        free = [t for t in NOTE_TOPICS if f"notes:{t[0]}" not in self.keys]
        topics = [next(t for t in NOTE_TOPICS if t[0] == asked[0])] if asked else []
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
            snippet = self.pick(NOTE_SNIPPETS).format_map(fields)
            results.append({"title": self.rng.choice(NOTE_TITLES), "snippet": snippet})
            values.append(value)
        self.rng.shuffle(results)
        topic = topics[0][0]
        unit = [
            self.message("user", NOTES_REQUEST, {"topic": topic}),
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
        titles = self.rng.sample(EVENT_TITLES, self.rng.randint(1, 3))
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
            self.message("user", CALENDAR_REQUEST, {"date": date}),
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
            self.message("user", CONTACT_REQUEST, {"n": person}),
            self.tool_call("get_contact", {"name": person}),
            self.tool_result("get_contact", result, (person, phone, city)),
        ]
        return unit, {"n": person}, frozenset()

    # documents
    def document(self, doc: Doc, preset: Mapping[str, str]) -> tuple[list[_Draft], dict[str, str]]:
        if not self.reserve(f"doc:{doc.name}"):
            raise _Rejected("document used twice")
        fields = {f: preset.get(f) or self.draw(vtype) for f, vtype in doc.fields}
        intro = self.pick(DOC_INTROS)
        user = self.message("user", doc.layouts, fields, prefix=intro + "\n\n")
        return [user, self.message("assistant", DOC_ACKS)], fields

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
                out += self.turn(GREETINGS, {})
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
    relation = b.slot(RELATION)
    attr = b.rng.choice(PERSON_ATTRS)
    answer = b.draw(attr.value_type)
    bridge = b.draw("name")
    units = [b.slot_fact(relation, bridge), b.person_fact(attr, bridge, answer)]
    other_person: str | None = None
    for extra in ("other_relation", "same_attr_other", "bridge_other_attr"):
        if len(units) >= num_facts:
            break
        if extra == "other_relation":
            other_relation = b.slot(RELATION)
            other_person = b.draw("name")
            units.append(b.slot_fact(other_relation, other_person))
        elif extra == "same_attr_other":
            person = other_person or b.draw("name")
            units.append(b.person_fact(attr, person, b.draw(attr.value_type)))
        else:
            other_attr = b.rng.choice([a for a in PERSON_ATTRS if a is not attr])
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
    tool = b.rng.choice(TOOLS)
    ask = b.rng.choice(tool.asks)
    answer = b.draw(ask.value_type)
    unit, qfields, qextra = b.tool_use(tool, {ask.field: answer})
    units = [unit]
    while len(units) < num_facts:
        if b.rng.random() < 0.5:
            units.append(b.tool_use(b.rng.choice(TOOLS), {})[0])
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
    doc = b.rng.choice(DOCS)
    ask = b.rng.choice(doc.asks)
    answer = b.draw(ask.value_type)
    unit, fields = b.document(doc, {ask.field: answer})
    units = [unit]
    while len(units) < num_facts:
        free = [d for d in DOCS if f"doc:{d.name}" not in b.keys]
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
        relation = b.slot(RELATION)
        units.append(b.slot_fact(relation, b.draw("name")))
        attr = rng.choice(PERSON_ATTRS)
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
    check_split(split)
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
    slot_types = {value_type for fam in FAMILIES for _, value_type in fam.quals}
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
