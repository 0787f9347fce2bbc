"""`deltamem eval locomo`: data loading, the buffer's reused prefix, a tiny end-to-end run of
every system on the embedded model, resuming, and the summary statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import LOCOMO_DATA

from langchain_deltamem.evaluation import locomo
from langchain_deltamem.evaluation.locomo_data import (
    LoCoMoDataError,
    load_locomo,
    memory_messages,
    transcript,
)
from langchain_deltamem.generation import generate

DATA = LOCOMO_DATA
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"LoCoMo data not at {DATA}")


@pytest.fixture(scope="module")
def tiny_locomo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conv-26 and conv-30 cut to their first session, with the questions about it."""
    if not DATA.is_file():
        pytest.skip(f"LoCoMo data not at {DATA}")
    data = json.loads(DATA.read_text())
    small = []
    for item in data[:2]:
        conv = item["conversation"]
        keep = {k: conv[k] for k in ("speaker_a", "speaker_b", "session_1", "session_1_date_time")}
        questions = [
            q
            for q in item["qa"]
            if q["category"] < 5 and all(e.startswith("D1:") for e in q.get("evidence", []))
        ]
        small.append({"sample_id": item["sample_id"], "conversation": keep, "qa": questions})
    path = tmp_path_factory.mktemp("locomo") / "tiny.json"
    path.write_text(json.dumps(small))
    return path


@needs_data
def test_the_two_conversations_hold_233_questions_of_categories_1_to_4() -> None:
    convs = load_locomo(DATA, conversations=["conv-26", "conv-30"])
    assert [len(c.questions) for c in convs] == [152, 81]
    assert all(q.category in (1, 2, 3, 4) for c in convs for q in c.questions)
    first = convs[0].turns[0]
    assert (first.speaker, first.session, first.dia_id) == ("Caroline", 1, "D1:1")
    assert first.date == "1:56 pm on 8 May, 2023"
    assert all(isinstance(q.answer, str) for c in convs for q in c.questions)


def test_bad_data_is_refused_with_the_problem_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_locomo(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LoCoMoDataError, match="not valid JSON"):
        load_locomo(bad)
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"sample_id": "c1", "conversation": {}, "qa": []}]))
    with pytest.raises(LoCoMoDataError, match=r"unknown conversation ids \['c9'\]"):
        load_locomo(one, conversations=["c9"])
    turnless = tmp_path / "turnless.json"
    turnless.write_text(
        json.dumps([{"sample_id": "c1", "conversation": {"session_1": [{"x": 1}]}, "qa": []}])
    )
    with pytest.raises(LoCoMoDataError, match="c1 session_1: a turn without speaker/text"):
        load_locomo(turnless)


def test_renderings_keep_dates_and_speakers(tiny_locomo: Path) -> None:
    conv = load_locomo(tiny_locomo, conversations=["conv-26"])[0]
    text = transcript(conv.turns[:2])
    assert text.splitlines()[0] == "DATE: 1:56 pm on 8 May, 2023"
    assert text.splitlines()[1].startswith('Caroline said, "Hey Mel!')
    messages = memory_messages(conv)
    assert len(messages) == len(conv.turns)
    assert messages[0]["content"].startswith("(DATE: 1:56 pm on 8 May, 2023) Caroline: ")
    assert {m["role"] for m in messages} == {"user", "assistant"}
    assert all(
        (m["role"] == "assistant") == (t.speaker == conv.speaker_b)
        for m, t in zip(messages, conv.turns, strict=True)
    )


@pytest.mark.slow
def test_buffer_reuses_its_prefix_and_answers_as_the_full_prompt(tiny_locomo: Path) -> None:
    from langchain_deltamem.engine import get_engine

    engine = get_engine()
    settings = locomo.LoCoMoSettings(max_new_tokens=6, buffer_tokens=600)
    evaluator = locomo.LoCoMoEvaluator(engine, settings=settings)
    conv = load_locomo(tiny_locomo, conversations=["conv-26"])[0]
    prefix = evaluator._buffer_prefix(conv.turns)
    assert prefix.length <= 600 - 6 - settings.question_reserve
    assert "Caroline" in engine.tokenizer.decode(prefix.ids[0])
    for question in conv.questions[:2]:
        cached = evaluator._answer_from_buffer(prefix, question)
        assert prefix.cache.get_seq_length() == prefix.length  # cropped back
        full = torch.cat([prefix.ids, evaluator.buffer_suffix_ids(question)], dim=1)
        plain = generate(engine.model, engine.tokenizer, full, evaluator.generation).text.strip()
        assert cached == plain


@pytest.mark.slow
def test_every_system_answers_and_a_rerun_resumes(
    tiny_locomo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = locomo.LoCoMoSettings(window=4, top_k=2, max_new_tokens=6, buffer_tokens=700)
    kwargs = dict(
        conversations=["conv-26"],
        systems=locomo.SYSTEMS,
        msw_adapter="fresh-msw",
        max_questions=1,
        settings=settings,
        out=tmp_path,
        progress=False,
    )
    records = locomo.evaluate(tiny_locomo, **kwargs)
    assert sorted({r["system"] for r in records}) == sorted(locomo.SYSTEMS)
    assert len(records) == len(locomo.SYSTEMS)
    assert all(0.0 <= r["f1"] <= 1.0 for r in records)
    by = {(r["system"], r["question_id"]): r["prediction"] for r in records}
    questions = sorted({r["question_id"] for r in records})
    # an empty state reads zero: the δ-mem model then answers exactly as the bare backbone
    for q in questions:
        assert by[("zero_state", q)] == by[("recent", q)]
    # states were written once and cached as safetensors
    assert len(list((tmp_path / "states").glob("*.safetensors"))) == 3  # own, partner, MSW

    # a rerun generates nothing new
    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished answer was generated again")

    monkeypatch.setattr(locomo, "generate", no_generation)
    again = locomo.evaluate(tiny_locomo, **kwargs)
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, records))

    # another adapter: the baselines' answers are reused, the memory systems answer again
    calls: list[int] = []

    def counting(*args: object, **kw: object) -> object:
        calls.append(1)
        return generate(*args, **kw)  # the real one, imported above

    monkeypatch.setattr(locomo, "generate", counting)
    other = dict(kwargs, adapter="fresh-tsw", systems=["recent", "zero_state"])
    mixed = locomo.evaluate(tiny_locomo, **other)
    assert len(calls) == 1  # zero_state answered again; recent came from the cache
    assert {r["system"] for r in mixed} == {"recent", "zero_state"}
    # answers made with other settings are never mixed in
    with pytest.raises(ValueError, match="other settings"):
        locomo.evaluate(tiny_locomo, **dict(kwargs, settings=locomo.LoCoMoSettings(window=2)))


def test_summary_reports_category_means_and_paired_intervals() -> None:
    records = []
    for i, (ref, mine, category) in enumerate([(0.0, 1.0, 1), (0.5, 0.5, 2), (1.0, 1.0, 4)]):
        for system, f1 in (("recent", ref), ("deltamem", mine)):
            records.append(
                {"system": system, "question_id": f"q{i}", "category": category, "f1": f1}
            )
    summary = locomo.summarize(records)
    mine = summary["systems"]["deltamem"]
    assert mine["overall"] == pytest.approx(100 * 2.5 / 3)
    assert mine["categories"]["multi-hop"] == {"n": 1, "f1": 100.0}
    assert "open-domain" not in mine["categories"]
    assert mine["minus_reference"]["estimate"] == pytest.approx(100 / 3)
    assert mine["ratio_to_reference"]["estimate"] == pytest.approx(2.5 / 1.5)
    assert "minus_reference" not in summary["systems"]["recent"]
    table = locomo.to_markdown(summary)
    assert "| deltamem | 3 | 100.00 | 50.00 | – | 100.00 | 83.33 |" in table


def test_unknown_system_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown systems \['gpt'\]"):
        locomo.evaluate(tmp_path / "x.json", systems=["gpt"], out=tmp_path)
