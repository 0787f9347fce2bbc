"""Tests for ``langchain_deltamem.adapter_reference``: the reference's config dialect."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import REFERENCE_DEFAULTS

from langchain_deltamem.adapter_reference import config_from_reference, config_to_reference
from langchain_deltamem.config import DeltaMemConfig


def _reference(**changes: Any) -> dict[str, Any]:
    return {**REFERENCE_DEFAULTS, **changes}


def test_reference_defaults_parse() -> None:
    config = config_from_reference(dict(REFERENCE_DEFAULTS))
    assert config.rank == 8
    assert config.alpha == 16.0
    assert config.heads == ("q", "k", "v", "o")
    assert config.update_mode == "standard"
    assert config.write_granularity == "token"
    assert config.output_init == "zero"
    assert config.num_states == 1
    assert config.target_layers is None
    # An empty dict means "every field at its default" as well.
    assert config_from_reference({}) == config


def test_reference_dict_has_every_field() -> None:
    body = config_to_reference(DeltaMemConfig())
    assert set(body) == set(REFERENCE_DEFAULTS)
    json.dumps(body)  # JSON-safe
    assert body["delta_heads"] == ["q", "o"]
    assert body["memory_write_granularity"] == "message_mean"
    assert body["output_init"] == "base_slice_fixed"
    assert body["target_layers"] == []
    for name in ("couple_lambda", "num_memory_partitions", "delta_o_rmsnorm", "target_modules"):
        assert body[name] == REFERENCE_DEFAULTS[name]


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(DeltaMemConfig(), id="defaults"),
        pytest.param(DeltaMemConfig(write_granularity="token", heads="q,k,v,o"), id="tsw-qkvo"),
        pytest.param(
            DeltaMemConfig(
                rank=4,
                alpha=4.0,
                update_mode="plain",
                rankwise_gates=False,
                beta_bias_init=-1.0,
                output_init="zero",
                output_init_scale=0.1,
                num_states=4,
                target_layers=(1,),
            ),
            id="everything-changed",
        ),
        pytest.param(DeltaMemConfig(update_mode="gated"), id="gated"),
    ],
)
def test_reference_round_trip(config: DeltaMemConfig) -> None:
    body = json.loads(json.dumps(config_to_reference(config)))
    assert config_from_reference(body) == config


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [("standard", "standard"), ("lambda_outside", "gated"), ("no_lambda", "plain")],
)
def test_reference_update_modes(theirs: str, ours: str) -> None:
    config = config_from_reference(_reference(state_update_mode=theirs))
    assert config.update_mode == ours
    assert config_to_reference(config)["state_update_mode"] == theirs


@pytest.mark.parametrize(("theirs", "ours"), [("token", "token"), ("message_mean", "segment")])
def test_reference_write_granularity(theirs: str, ours: str) -> None:
    config = config_from_reference(_reference(memory_write_granularity=theirs))
    assert config.write_granularity == ours


@pytest.mark.parametrize(
    ("value", "heads"),
    [
        ("q,o", ("q", "o")),
        ("o,q", ("q", "o")),
        ("q, k, v, o", ("q", "k", "v", "o")),
        (["q", "o"], ("q", "o")),
    ],
)
def test_reference_delta_heads_forms(value: Any, heads: tuple[str, ...]) -> None:
    config = config_from_reference(_reference(delta_heads=value, output_init="zero"))
    assert config.heads == heads


def test_reference_fields_are_translated() -> None:
    config = config_from_reference(
        _reference(
            rank=4,
            alpha=32.0,
            beta_bias_init=-2.0,
            rankwise_gates=False,
            output_init="base_slice_fixed",
            online_gain=0.1,
            num_state_heads=4,
            target_layers=[2, 0],
            delta_heads=["q", "o"],
        )
    )
    assert (config.rank, config.alpha, config.beta_bias_init) == (4, 32.0, -2.0)
    assert config.rankwise_gates is False
    assert config.output_init == "base_slice"
    assert config.output_init_scale == 0.1
    assert config.num_states == 4
    assert config.target_layers == (0, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("couple_lambda", False),
        ("normalize_qk", False),
        ("num_memory_partitions", 2),
        ("num_global_memory_partitions", 1),
        ("memory_reader_layers", [3]),
        ("latent_memory_layers", [0]),
        ("memory_readout_mode", "additive"),
        ("memory_write_source", "hidden"),
        ("target_modules", ["mlp"]),
        ("delta_o_rmsnorm", True),
        ("trainable_delta_scale", True),
        ("memory_write_granularity", "sentence_mean"),
        ("state_update_mode", "fancy"),
    ],
)
def test_reference_unsupported_values_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        config_from_reference(_reference(**{field: value}))
    assert field in str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_reference_unknown_field_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="memory_magic"):
        config_from_reference(_reference(memory_magic=1))


def test_reference_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="rank"):
        config_from_reference(_reference(rank=0))
    with pytest.raises(ValueError, match="heads"):
        config_from_reference(_reference(delta_heads="q,x"))
    with pytest.raises(ValueError, match="object"):
        config_from_reference(["rank", 8])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delta_heads", 5),
        ("delta_heads", None),
        ("delta_heads", [1, 2]),
        ("target_layers", 3),
        ("memory_write_granularity", ["token"]),
        ("state_update_mode", {"mode": "standard"}),
        ("output_init", "orthogonal"),
    ],
)
def test_reference_malformed_values_are_value_errors_naming_the_field(
    field: str, value: Any
) -> None:
    """A hand-edited or foreign config must fail as a ValueError that names the field, never
    as a TypeError/AttributeError from deep inside the translation, nor be silently mapped."""
    with pytest.raises(ValueError) as info:
        config_from_reference(_reference(**{field: value}))
    assert field in str(info.value) or field.split("_")[-1] in str(info.value)
