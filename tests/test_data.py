"""Synthetic δ-mem episodes: kinds, split hygiene, curriculum, JSONL and chat loading (no model)."""

from __future__ import annotations

import json
import random
import re
import string
from collections import defaultdict
from pathlib import Path

import pytest

from langchain_deltamem.episodes import (
    HELDOUT,
    KINDS,
    NO_INFORMATION,
    SPLITS,
    TRAIN,
    VALUE_TYPES,
    Episode,
    candidate_values,
    generate_episodes,
    load_chats_jsonl,
    read_jsonl,
    template_sets,
    value_pool,
    write_jsonl,
)
from langchain_deltamem.episodes.cli import main

# 6 kinds x 4 numbers of facts x 6: every combination, six times over.
EPISODES = {split: generate_episodes(144, split=split, seed=11) for split in SPLITS}


def _all(kind: str | None = None) -> list[Episode]:
    return [e for split in SPLITS for e in EPISODES[split] if kind is None or e.kind == kind]


def _template_regex(template: str) -> str:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal) + (".+" if field else ""))
    return "".join(parts)


def _fact_count(episode: Episode) -> int:
    """Facts stored = acknowledged statements + acknowledged documents + tool results."""
    templates, held = template_sets(TRAIN), template_sets(HELDOUT)
    acks = {*templates["ack"], *held["ack"], *templates["doc_ack"], *held["doc_ack"]}
    echo = re.compile(
        "|".join(_template_regex(t) for t in (*templates["ack_echo"], *held["ack_echo"]))
    )
    count = 0
    for message in episode.messages:
        if message.role == "tool":
            count += 1
        elif message.role == "assistant" and (
            message.content in acks or echo.fullmatch(message.content)
        ):
            count += 1
    return count


def test_generation_is_deterministic_per_seed() -> None:
    first = [e.to_json() for e in generate_episodes(30, seed=5)]
    again = [e.to_json() for e in generate_episodes(30, seed=5)]
    other = [e.to_json() for e in generate_episodes(30, seed=6)]
    assert first == again
    assert first != other
    assert len({e["id"] for e in first}) == 30


def test_every_kind_is_generated_and_answerable_from_the_history() -> None:
    for split in SPLITS:
        assert {e.kind for e in EPISODES[split]} == set(KINDS)
    for episode in _all():
        texts = [m.content for m in episode.messages]
        assert episode.answer not in episode.question
        if episode.kind == "absent":
            assert episode.answer == NO_INFORMATION
            asked = episode.meta["value"]
            assert not any(asked in text for text in texts)
            assert asked not in episode.question
        else:
            assert episode.answer == episode.meta["value"]
            assert any(episode.answer in text for text in texts)
            assert episode.answer in value_pool(episode.meta["value_type"], episode.split)


def test_update_answers_the_latest_value() -> None:
    for episode in _all("update"):
        old, new = episode.meta["old_value"], episode.answer
        texts = [m.content for m in episode.messages]
        first_old = min(i for i, t in enumerate(texts) if old in t)
        first_new = min(i for i, t in enumerate(texts) if new in t)
        assert first_old < first_new
        last_mention = max(i for i, t in enumerate(texts) if old in t or new in t)
        assert new in texts[last_mention]


def test_two_hop_needs_both_facts() -> None:
    for episode in _all("two_hop"):
        bridge, answer = episode.meta["bridge"], episode.answer
        relation = episode.meta["key"].split(">")[0].removeprefix("relation:")
        assert bridge not in episode.question and relation in episode.question
        texts = [m.content for m in episode.messages]
        assert any(bridge in t and answer in t for t in texts)  # "Mara lives in Quito."
        assert any(bridge in t and relation in t and answer not in t for t in texts)
        assert not any(relation in t and answer in t for t in texts)  # never in one message
        assert episode.num_facts >= 2


def test_agent_answers_only_in_a_tool_result() -> None:
    for episode in _all("agent"):
        tool = episode.meta["tool"]
        holders = [m for m in episode.messages if episode.answer in m.content]
        assert holders and all(m.role == "tool" for m in holders)
        assert all(m.source == f"tool:{tool}" for m in holders)
        calls = [
            json.loads(m.content.split("<tool_call>")[1].split("</tool_call>")[0])
            for m in episode.messages
            if m.role == "assistant" and "<tool_call>" in m.content
        ]
        assert tool in {call["name"] for call in calls}
        assert all(set(call) == {"name", "arguments"} for call in calls)
    for message in (m for e in _all() for m in e.messages):
        assert (message.role == "tool") == message.source.startswith("tool:")


def test_document_answers_come_from_a_pasted_document() -> None:
    for episode in _all("document"):
        holders = [m for m in episode.messages if episode.answer in m.content]
        assert holders and all(m.role == "user" for m in holders)
        assert any("\n\n" in m.content and len(m.content) > 80 for m in holders)


@pytest.mark.parametrize("num_facts", [1, 2, 4, 8])
def test_num_facts_is_respected(num_facts: int) -> None:
    episodes = generate_episodes(24, seed=num_facts, num_facts=num_facts)
    for episode in episodes:
        expected = max(2, num_facts) if episode.kind == "two_hop" else num_facts
        assert episode.num_facts == expected
        stored = _fact_count(episode) - (episode.kind == "update")  # statement + its update
        assert stored == expected, episode.kind


def test_value_pools_are_disjoint_and_large() -> None:
    for value_type in VALUE_TYPES:
        samples = {}
        for split in SPLITS:
            pool, rng = value_pool(value_type, split), random.Random(3)
            samples[split] = [pool.sample(rng) for _ in range(5_000)]
            assert all(v in pool for v in samples[split][:200])
        assert not set(samples[TRAIN]) & set(samples[HELDOUT]), value_type
        assert not any(v in value_pool(value_type, TRAIN) for v in samples[HELDOUT])
        if value_type in ("name", "code", "pin", "city", "street", "cafe", "band", "date"):
            for split in SPLITS:
                assert len(set(samples[split])) >= 2_000, (value_type, split)


def test_templates_are_split() -> None:
    train, held = template_sets(TRAIN), template_sets(HELDOUT)
    assert train.keys() == held.keys() and len(train) > 50
    for family in train:
        assert train[family] and held[family], family
        assert not set(train[family]) & set(held[family]), family
    all_train = {t for ts in train.values() for t in ts}
    all_held = {t for ts in held.values() for t in ts}
    assert not all_train & all_held


@pytest.mark.parametrize("split", SPLITS)
def test_questions_use_only_their_split_templates(split: str) -> None:
    templates = template_sets(split)
    asks = [t for family, ts in templates.items() if family.endswith("_ask") for t in ts]
    leads = "|".join(re.escape(t) for t in templates["question_lead"])
    pattern = re.compile(f"(?:{leads})?(?:{'|'.join(_template_regex(t) for t in asks)})")
    for episode in EPISODES[split]:
        assert pattern.fullmatch(episode.question), episode.question


def test_candidates_restrict_the_answers() -> None:
    kinds = [k for k in KINDS if k != "absent"]
    episodes = generate_episodes(60, seed=2, kinds=kinds, num_facts=(1, 4, 8), candidates=3)
    answers = defaultdict(set)
    for episode in episodes:
        value_type = episode.meta["value_type"]
        assert episode.answer in candidate_values(value_type, TRAIN, 0, 3)
        answers[value_type].add(episode.answer)
    assert all(len(values) <= 3 for values in answers.values())
    assert max(len(values) for values in answers.values()) > 1
    # The candidate set does not follow the episode seed (a trainer varies it per step) and
    # grows by extension, so a curriculum only ever adds values.
    later = generate_episodes(30, seed=99, kinds=["facts"], candidates=3)
    assert all(e.answer in candidate_values(e.meta["value_type"], TRAIN, 0, 3) for e in later)
    assert candidate_values("name", TRAIN, 0, 10)[:3] == candidate_values("name", TRAIN, 0, 3)
    assert len(candidate_values("temperature", HELDOUT, 0, 10_000)) < 1_000  # a small pool


def test_value_types_restrict_the_asked_facts() -> None:
    episodes = generate_episodes(
        40, seed=3, kinds=["facts", "update"], num_facts=(1, 2), value_types=["colour", "name"]
    )
    assert {e.meta["value_type"] for e in episodes} == {"colour", "name"}
    everything = generate_episodes(40, seed=3, kinds=["facts", "update"], num_facts=(1, 2))
    assert len({e.meta["value_type"] for e in everything}) > 2
    with pytest.raises(ValueError, match="value_types"):
        generate_episodes(1, value_types=["colour", "smell"])
    with pytest.raises(ValueError, match="value_types"):
        generate_episodes(1, value_types=[])


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kinds"):
        generate_episodes(1, kinds=["gossip"])
    with pytest.raises(ValueError, match="split"):
        generate_episodes(1, split="test")
    with pytest.raises(ValueError, match="num_facts"):
        generate_episodes(1, num_facts=0)
    with pytest.raises(ValueError, match="candidates"):
        generate_episodes(1, candidates=0)
    with pytest.raises(ValueError, match="distractors"):
        generate_episodes(1, distractors=(3, 1))
    assert generate_episodes(0) == []


def test_distractors_set_the_chatter_per_gap() -> None:
    greetings = {t for s in SPLITS for t in template_sets(s)["chat_greeting"]}
    for distractors, per_gap in ((0, 0), (2, 2)):
        for episode in generate_episodes(8, kinds=["facts"], num_facts=3, distractors=distractors):
            users = [m for m in episode.messages if m.role == "user"]
            chatter = [m for m in users if m.content not in greetings]
            assert len(chatter) == 3 + 4 * per_gap  # 3 facts, 4 gaps


def test_jsonl_round_trip(tmp_path: Path) -> None:
    episodes = EPISODES[HELDOUT][:24]
    path = tmp_path / "sub" / "episodes.jsonl"
    assert write_jsonl(episodes, path) == 24
    assert read_jsonl(path) == episodes
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {
        "id", "split", "kind", "num_facts", "messages", "question", "answer", "meta"
    }  # fmt: skip
    assert all(set(m) == {"role", "content", "source"} for m in first["messages"])
    assert Episode.from_json(episodes[0].to_json()) == episodes[0]
    assert episodes[0].history() == first["messages"]


def test_read_errors_name_the_line(tmp_path: Path) -> None:
    good = json.dumps(EPISODES[TRAIN][0].to_json())
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON"):
        read_jsonl(path)
    data = EPISODES[TRAIN][0].to_json()
    cases = [
        ({**data, "messages": [{"role": "robot", "content": "x", "source": "robot"}]}, "role"),
        ({**data, "messages": [{"role": "tool", "content": "x", "source": "tool"}]}, "tool:"),
        ({**data, "messages": [{"role": "user", "content": 3, "source": "user"}]}, "content"),
        ({k: v for k, v in data.items() if k != "answer"}, "answer"),
        ({**data, "split": "dev"}, "split"),
        ({**data, "num_facts": "2"}, "num_facts"),
        ({**data, "extra": 1}, "extra"),
        ([1, 2], "JSON object"),
    ]
    for bad, problem in cases:
        path.write_text(f"{good}\n{json.dumps(bad)}\n")
        with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{problem}"):
            read_jsonl(path)


def _chat(*messages: dict) -> str:
    return json.dumps({"messages": list(messages)})


def test_load_chats_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    chat = _chat(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My cat is called Zorvelle."},
        {"role": "assistant", "content": "Cute name!"},
        {"role": "assistant", "content": '<tool_call>{"name": "get_weather"}</tool_call>'},
        {"role": "tool", "name": "get_weather", "content": '{"temperature": "4.1°C"}'},
        {"role": "tool", "content": "ok"},
        {"role": "user", "content": "What is my cat called?"},
        {"role": "assistant", "content": "Zorvelle"},
    )
    path.write_text(chat + "\n\n" + _chat(*json.loads(chat)["messages"][-2:]) + "\n")
    first, second = load_chats_jsonl(path)
    assert first.question == "What is my cat called?" and first.answer == "Zorvelle"
    assert [m.source for m in first.messages] == [
        "user", "assistant", "assistant", "tool:get_weather", "tool:tool"
    ]  # fmt: skip
    assert first.kind == "chat" and first.split == TRAIN and first.id != second.id
    assert second.messages == ()
    assert load_chats_jsonl(path, split=HELDOUT)[0].split == HELDOUT


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (_chat({"role": "user", "content": "Hi"}), "no assistant message"),
        (_chat({"role": "assistant", "content": "Hi"}), "no user message"),
        (_chat({"role": "user", "content": ["Hi"]}, {"role": "assistant", "content": "x"}), "str"),
        (_chat({"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "x"}), "role"),
        (_chat({"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}), "answer"),
        (
            _chat(
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "more"},
            ),
            "after the last assistant",
        ),
        (json.dumps({"turns": []}), "messages"),
        ("[1", "invalid JSON"),
    ],
)
def test_load_chats_errors_name_the_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "chats.jsonl"
    ok = _chat({"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"})
    path.write_text(f"{ok}\n{line}\n")
    with pytest.raises(ValueError, match=rf"chats\.jsonl:2: .*{re.escape(problem)}"):
        load_chats_jsonl(path)


def test_cli_writes_episodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "episodes.jsonl"
    argv = ["--out", str(out), "--n", "12", "--split", "heldout", "--seed", "4"]
    main([*argv, "--num-facts", "1", "2", "--kinds", "facts", "agent", "--candidates", "5"])
    episodes = read_jsonl(out)
    assert len(episodes) == 12 and {e.kind for e in episodes} == {"facts", "agent"}
    assert {e.num_facts for e in episodes} == {1, 2} and {e.split for e in episodes} == {HELDOUT}
    assert "wrote 12 heldout episodes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--kinds", "gossip"])


def test_deltamem_data_through_the_top_level_command(tmp_path, capsys) -> None:
    from langchain_deltamem.cli import main as cli_main

    out = tmp_path / "eps.jsonl"
    cli_main(["data", "--out", str(out), "--n", "3", "--split", "heldout", "--num-facts", "1"])
    assert "wrote 3 heldout episodes" in capsys.readouterr().out
    assert len(read_jsonl(out)) == 3
