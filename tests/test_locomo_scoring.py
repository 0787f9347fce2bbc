"""LoCoMo scoring: each rule checked against values worked out by hand in the comments."""

from __future__ import annotations

import pytest

from langchain_deltamem.evaluation.locomo_scoring import (
    CATEGORIES,
    QA_PROMPT,
    TEMPORAL_SUFFIX,
    answer_tokens,
    normalize_answer,
    qa_prompt,
    score,
    token_f1,
)


def test_categories_exclude_adversarial() -> None:
    assert CATEGORIES == {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}


@pytest.mark.parametrize("category", [1, 2, 3, 4])
def test_exact_match_scores_one(category: int) -> None:
    assert score("Eiffel Tower", "Eiffel Tower", category) == pytest.approx(1.0)


def test_normalize_drops_case_punctuation_articles_and_and() -> None:
    # lower -> "the cat, an owl and a dog!" -> no punctuation -> "the cat an owl and a dog"
    # -> a/an/the/and removed -> "cat owl dog"
    assert normalize_answer("The Cat, an Owl and A Dog!") == "cat owl dog"


def test_dropped_words_only_match_whole_words() -> None:
    # "Andrew", "Theo" and "Anna" merely start with a dropped word; only the lone "and" goes.
    assert normalize_answer("Andrew and Theo  Anna") == "andrew theo anna"


def test_articles_punctuation_case_ignored_in_score() -> None:
    # both sides normalise to "eiffel tower"
    assert score("The Eiffel Tower!", "eiffel tower", 4) == pytest.approx(1.0)


def test_and_is_removed() -> None:
    # "salt and pepper" -> "salt pepper"; without the removal it would be P=2/3, R=1, F1=0.8
    assert score("salt and pepper", "salt pepper", 4) == pytest.approx(1.0)


def test_answer_tokens_are_stemmed() -> None:
    # "running" and "runs" both stem to "run"; "runners" to "runner"
    assert answer_tokens("The runners, running and runs!") == ["runner", "run", "run"]


@pytest.mark.parametrize("prediction", ["running", "runs", "Run."])
def test_stemming_makes_inflections_match(prediction: str) -> None:
    assert score(prediction, "run", 4) == pytest.approx(1.0)


def test_partial_overlap_f1() -> None:
    # prediction tokens: went, to, pari, in, may (5); gold: pari (1); overlap 1
    # P = 1/5, R = 1/1, F1 = 2 * (1/5) * 1 / (1/5 + 1) = (2/5) / (6/5) = 1/3
    assert token_f1("went to Paris in May", "Paris") == pytest.approx(1 / 3)
    assert score("went to Paris in May", "Paris", 4) == pytest.approx(1 / 3)


def test_overlap_is_multiset() -> None:
    # prediction "cat cat" (2 tokens) vs gold "cat" (1): Counter overlap is min(2, 1) = 1
    # P = 1/2, R = 1, F1 = 2 * (1/2) / (3/2) = 2/3
    assert token_f1("the cat and the cat", "cat") == pytest.approx(2 / 3)


def test_no_overlap_is_zero() -> None:
    assert token_f1("London", "Paris") == 0.0


def test_multi_hop_one_of_two_gold_parts_covered() -> None:
    # gold parts "hiking" -> best 0, " painting" -> best 1 (from "painting"); mean = 0.5
    assert score("painting", "hiking, painting", 1) == pytest.approx(0.5)


def test_multi_hop_order_of_parts_does_not_matter() -> None:
    # each gold part finds its exact twin among the prediction parts: (1 + 1) / 2
    assert score("painting, hiking", "hiking, painting", 1) == pytest.approx(1.0)


def test_multi_hop_partial_part() -> None:
    # gold "Paris": best prediction part "went to Paris" -> went,to,pari: P=1/3, R=1, F1=1/2
    # gold "London": no prediction part overlaps -> 0; mean = (1/2 + 0) / 2 = 1/4
    assert score("went to Paris, Rome", "Paris, London", 1) == pytest.approx(0.25)


def test_multi_hop_differs_from_plain_f1() -> None:
    # plain F1 over the whole strings: pred {painting}, gold {hiking, painting}:
    # P = 1, R = 1/2, F1 = 2/3 -- category 1 averages per gold part instead (0.5)
    assert score("painting", "hiking, painting", 4) == pytest.approx(2 / 3)


def test_open_domain_uses_first_semicolon_part_only() -> None:
    gold = "Sweden; her home country"
    # first part "Sweden" only: exact match
    assert score("Sweden", gold, 3) == pytest.approx(1.0)
    # the second part is ignored, so a prediction matching it shares nothing with "sweden"
    assert score("her home country", gold, 3) == 0.0
    # plain F1 against the whole gold would have credited it: pred her,home,countri (3),
    # gold sweden,her,home,countri (4), overlap 3: P = 1, R = 3/4, F1 = 1.5 / 1.75 = 6/7
    assert score("her home country", gold, 4) == pytest.approx(6 / 7)


def test_temporal_is_plain_f1() -> None:
    # pred may,2023 (2); gold 7,may,2023 (3); overlap 2: P = 1, R = 2/3, F1 = (4/3) / (5/3) = 4/5
    assert score("May 2023", "7 May 2023", 2) == pytest.approx(0.8)


def test_int_gold_answer() -> None:
    assert score("2022", 2022, 2) == pytest.approx(1.0)
    # pred in,2022 vs gold 2022: P = 1/2, R = 1, F1 = 1 / (3/2) = 2/3
    assert score("in 2022", 2022, 4) == pytest.approx(2 / 3)
    assert score("2022", 2022, 1) == pytest.approx(1.0)
    assert score("2022", 2022, 3) == pytest.approx(1.0)


@pytest.mark.parametrize("category", [1, 2, 3, 4])
def test_empty_prediction_scores_zero(category: int) -> None:
    assert score("", "Paris", category) == 0.0


def test_prediction_empty_after_normalisation_scores_zero() -> None:
    # "The, and a!" normalises to "" -> no tokens
    assert token_f1("The, and a!", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0


@pytest.mark.parametrize("category", [0, 5, 6])
def test_invalid_category_raises_naming_it(category: int) -> None:
    with pytest.raises(ValueError, match=rf"category {category}\b"):
        score("Paris", "Paris", category)


def test_qa_prompt_format() -> None:
    question = "Where did Ann go?"
    assert qa_prompt(question, 4) == f"{question}\n{QA_PROMPT}"
    assert qa_prompt(question, 2) == f"{question}\n{QA_PROMPT}{TEMPORAL_SUFFIX}"
    assert TEMPORAL_SUFFIX == " Use DATE of CONVERSATION to answer with an approximate date."
    assert QA_PROMPT.startswith("Based on the above conversations, write a short answer")
    assert QA_PROMPT.endswith("Answer with exact words from the conversations whenever possible.")
