"""Tests for ``langchain_deltamem.config``: defaults, validation, and its JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from langchain_deltamem.config import DeltaMemConfig

# ----------------------------------------------------------------------------------------
# Defaults and derived quantities
# ----------------------------------------------------------------------------------------


def test_defaults_match_the_paper() -> None:
    config = DeltaMemConfig()
    assert config.rank == 8
    assert config.alpha == 16.0
    assert config.heads == ("q", "o")
    assert config.update_mode == "standard"
    assert config.rankwise_gates is True
    assert config.beta_bias_init == -1.5
    assert config.num_states == 1
    assert config.write_granularity == "segment"
    assert config.target_layers is None
    assert config.scale == 2.0
    assert config.state_rows == 8
    assert config.gate_rows == 8
    assert config.strategy == "SSW"


def test_derived_quantities_for_msw() -> None:
    config = DeltaMemConfig(num_states=4, write_granularity="token")
    assert config.scale == 2.0  # alpha / rank, not divided by H
    assert config.state_rows == 32
    assert config.gate_rows == 32
    assert config.strategy == "MSW-TSW"
    assert DeltaMemConfig(num_states=4, rankwise_gates=False).gate_rows == 4


def test_strategy_names_map_to_configs() -> None:
    assert DeltaMemConfig.for_strategy("ssw") == DeltaMemConfig()
    assert DeltaMemConfig.for_strategy("tsw").strategy == "TSW"
    assert DeltaMemConfig.for_strategy("msw").strategy == "MSW-SSW"
    assert DeltaMemConfig.for_strategy("msw", rank=4).state_rows == 16
    with pytest.raises(ValueError, match=r"'gsw'.*\['msw', 'ssw', 'tsw'\]"):
        DeltaMemConfig.for_strategy("gsw")


def test_config_is_immutable() -> None:
    config = DeltaMemConfig()
    with pytest.raises(ValidationError):
        config.rank = 4  # type: ignore[misc]


def test_heads_are_canonicalised() -> None:
    assert DeltaMemConfig(heads=("o", "q")).heads == ("q", "o")
    assert DeltaMemConfig(heads="q,o").heads == ("q", "o")
    assert DeltaMemConfig(heads=["v", "k", "q"]).heads == ("q", "k", "v")


def test_target_layers_are_sorted() -> None:
    assert DeltaMemConfig(target_layers=[3, 0, 1]).target_layers == (0, 1, 3)


# ----------------------------------------------------------------------------------------
# Validation errors name the field
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "detail"),
    [
        pytest.param({"heads": ("q", "x")}, "heads", "'x'", id="bad-head-letter"),
        pytest.param({"heads": ()}, "heads", "at least one", id="empty-heads"),
        pytest.param({"heads": ("q", "q")}, "heads", "duplicate", id="duplicate-heads"),
        pytest.param({"rank": 0}, "rank", "greater than or equal to 1", id="rank-0"),
        pytest.param({"alpha": 0}, "alpha", "greater than 0", id="alpha-0"),
        pytest.param({"num_states": 0}, "num_states", "greater than", id="num-states-0"),
        pytest.param({"target_layers": [1, 1]}, "target_layers", "duplicate", id="dup-layers"),
        pytest.param({"target_layers": [-1]}, "target_layers", "negative", id="negative-layer"),
        pytest.param({"target_layers": []}, "target_layers", "empty", id="empty-layers"),
        pytest.param({"update_mode": "fast"}, "update_mode", "fast", id="bad-update-mode"),
        pytest.param({"ranks": 8}, "ranks", "extra", id="unknown-field"),
    ],
)
def test_validation_errors_name_the_field(kwargs: dict[str, Any], field: str, detail: str) -> None:
    with pytest.raises(ValueError) as info:
        DeltaMemConfig(**kwargs)
    message = str(info.value)
    assert field in message
    assert detail.lower() in message.lower()


def test_base_slice_needs_a_q_or_o_head() -> None:
    with pytest.raises(ValueError, match="output_init"):
        DeltaMemConfig(heads=("k", "v"))
    assert DeltaMemConfig(heads=("k", "v"), output_init="zero").heads == ("k", "v")


# ----------------------------------------------------------------------------------------
# Own JSON
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(DeltaMemConfig(), id="defaults"),
        pytest.param(
            DeltaMemConfig(
                rank=4,
                alpha=8.0,
                heads=("q", "k", "v", "o"),
                update_mode="gated",
                rankwise_gates=False,
                beta_bias_init=-2.25,
                output_init="zero",
                output_init_scale=0.125,
                num_states=4,
                write_granularity="token",
                target_layers=(0, 2),
            ),
            id="everything-changed",
        ),
    ],
)
def test_own_json_round_trip(config: DeltaMemConfig) -> None:
    text = config.to_json()
    body = json.loads(text)
    assert body["format"] == "langchain-deltamem/config"
    assert body["version"] == 1
    again = DeltaMemConfig.from_json(text)
    assert again == config
    assert again.to_json() == text


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        pytest.param(lambda d: d.update(format="other"), "format", id="wrong-format"),
        pytest.param(lambda d: d.pop("format"), "format", id="no-format"),
        pytest.param(lambda d: d.update(version=2), "version", id="future-version"),
        pytest.param(lambda d: d.update(version="1"), "version", id="string-version"),
        pytest.param(lambda d: d.update(rank=-3), "rank", id="invalid-field"),
        pytest.param(lambda d: d.update(colour="red"), "colour", id="unknown-field"),
    ],
)
def test_own_json_refuses_bad_documents(mutate: Any, match: str) -> None:
    body = DeltaMemConfig().to_json_dict()
    mutate(body)
    with pytest.raises(ValueError, match=match):
        DeltaMemConfig.from_json(json.dumps(body))


def test_own_json_refuses_invalid_json() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        DeltaMemConfig.from_json('{"rank": 8,')
    with pytest.raises(ValueError, match="object"):
        DeltaMemConfig.from_json("[1, 2]")
