"""The reference implementation's adapter format: its file names and its config dialect.

A reference adapter is a directory with ``delta_mem_config.json`` and ``delta_mem_adapter.pt``;
`adapter_files` reads and writes the directory, this module translates its
``delta_mem_config.json`` to and from a `DeltaMemConfig`.
"""

from __future__ import annotations

from typing import Any

from .config import DeltaMemConfig

REFERENCE_CONFIG_FILE = "delta_mem_config.json"
REFERENCE_WEIGHTS_FILE = "delta_mem_adapter.pt"


def config_from_reference(data: dict[str, Any]) -> DeltaMemConfig:
    """Translate the reference's ``delta_mem_config.json``.

    Options that change the maths and that this package does not implement are refused by
    name instead of being ignored, so a loaded adapter always computes what it was trained to.
    """
    if not isinstance(data, dict):
        raise ValueError("delta_mem_config.json must hold a JSON object")
    unknown = sorted(set(data) - set(_REFERENCE_DEFAULTS))
    if unknown:
        raise ValueError(f"delta_mem_config.json: unknown field(s) {unknown}")
    merged = {**_REFERENCE_DEFAULTS, **data}
    for name, required in _REFERENCE_FIXED.items():
        value = merged[name]
        if isinstance(required, tuple):
            value = tuple(value) if isinstance(value, list) else value
        if value != required:
            raise ValueError(
                f"delta_mem_config.json: {name}={merged[name]!r} is not supported "
                f"(only {required!r})"
            )
    _check_reference_types(merged)
    granularity = merged["memory_write_granularity"]
    if granularity not in _REFERENCE_GRANULARITY:
        raise ValueError(
            f"delta_mem_config.json: memory_write_granularity={granularity!r} is not "
            f"supported; use one of {sorted(_REFERENCE_GRANULARITY)}"
        )
    mode = merged["state_update_mode"]
    if mode not in _REFERENCE_MODES:
        raise ValueError(
            f"delta_mem_config.json: state_update_mode={mode!r}; expected one of "
            f"{sorted(_REFERENCE_MODES)}"
        )
    heads = merged["delta_heads"]
    if isinstance(heads, str):
        heads = () if heads.strip().lower() == "none" else heads.split(",")
    return DeltaMemConfig(
        rank=merged["rank"],
        alpha=merged["alpha"],
        heads=tuple(h.strip() for h in heads),
        update_mode=_REFERENCE_MODES[mode],
        rankwise_gates=merged["rankwise_gates"],
        beta_bias_init=merged["beta_bias_init"],
        output_init="zero" if merged["output_init"] == "zero" else "base_slice",  # init only
        output_init_scale=merged["online_gain"],
        num_states=merged["num_state_heads"],
        write_granularity=_REFERENCE_GRANULARITY[granularity],
        target_layers=tuple(merged["target_layers"]) or None,
    )


def config_to_reference(config: DeltaMemConfig) -> dict[str, Any]:
    """The reference's ``delta_mem_config.json`` body for this config (every field)."""
    if config.centred_inputs or config.segment_tokens != "all":
        raise ValueError(
            "the reference format has no centred_inputs or segment_tokens; save this "
            "adapter in the project's own format"
        )
    modes = {ours: theirs for theirs, ours in _REFERENCE_MODES.items()}
    granularity = {ours: theirs for theirs, ours in _REFERENCE_GRANULARITY.items()}
    data = dict(_REFERENCE_DEFAULTS)
    data.update(
        rank=config.rank,
        alpha=config.alpha,
        beta_bias_init=config.beta_bias_init,
        state_update_mode=modes[config.update_mode],
        rankwise_gates=config.rankwise_gates,
        output_init="zero" if config.output_init == "zero" else "base_slice_fixed",
        base_slice_ref_width=config.rank,
        online_gain=config.output_init_scale,
        num_state_heads=config.num_states,
        memory_write_granularity=granularity[config.write_granularity],
        target_layers=list(config.target_layers or ()),
        delta_heads=list(config.heads),
    )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _check_reference_types(data: dict[str, Any]) -> None:
    """Refuse values of the wrong JSON type with a ValueError naming the field."""
    expected: dict[str, tuple[type, ...]] = {
        "rank": (int,),
        "alpha": (int, float),
        "beta_bias_init": (int, float),
        "online_gain": (int, float),
        "num_state_heads": (int,),
        "rankwise_gates": (bool,),
        "state_update_mode": (str,),
        "memory_write_granularity": (str,),
        "output_init": (str,),
        "delta_heads": (str, list, tuple),
        "target_layers": (list, tuple),
    }
    for name, types in expected.items():
        value = data[name]
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ValueError(f"delta_mem_config.json: {name}={value!r} must be {names}")
    if data["output_init"] not in _REFERENCE_OUTPUT_INITS:
        raise ValueError(
            f"delta_mem_config.json: output_init={data['output_init']!r}; expected one of "
            f"{sorted(_REFERENCE_OUTPUT_INITS)}"
        )
    heads = data["delta_heads"]
    if not isinstance(heads, str) and not all(isinstance(h, str) for h in heads):
        raise ValueError(f"delta_mem_config.json: delta_heads={heads!r} must be letters")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in data["target_layers"]):
        raise ValueError(
            f"delta_mem_config.json: target_layers={data['target_layers']!r} must be integers"
        )


_REFERENCE_OUTPUT_INITS = {"zero", "random", "base_slice", "base_slice_fixed"}
_REFERENCE_MODES = {"standard": "standard", "lambda_outside": "gated", "no_lambda": "plain"}
_REFERENCE_GRANULARITY = {"token": "token", "message_mean": "segment"}

# Every field the reference writes, with its default (facts from reading the reference).
_REFERENCE_DEFAULTS: dict[str, Any] = {
    "rank": 8,
    "alpha": 16.0,
    "beta_bias_init": -1.5,
    "normalize_qk": True,
    "couple_lambda": True,
    "state_update_mode": "standard",
    "rankwise_gates": True,
    "output_init": "zero",
    "base_slice_ref_width": 8,
    "online_gain": 0.05,
    "num_state_heads": 1,
    "num_memory_partitions": 1,
    "num_global_memory_partitions": 0,
    "memory_partition_routing": "soft",
    "memory_partition_basis": "shared",
    "tie_memory_partition_read_write": False,
    "memory_partition_read_mode": "softmax",
    "memory_partition_sigmoid_gate_bias_init": -2.0,
    "slot_read_top_k": 0,
    "global_memory_mode": "shared_rw",
    "global_memory_read_top_k": 0,
    "global_memory_merge_mode": "gated_residual",
    "global_memory_gate_bias_init": -2.0,
    "global_memory_read_logit_bias": 0.0,
    "memory_reader_layers": (),
    "memory_reader_hidden_size": 1024,
    "memory_reader_residual_scale": 0.1,
    "memory_reader_read_only": True,
    "memory_readout_mode": "delta",
    "memory_write_source": "learned_hidden",
    "memory_write_granularity": "token",
    "memory_write_proposals_per_message": 2,
    "synthetic_memory_slots": 1,
    "latent_memory_layers": (),
    "latent_memory_hidden_size": 1024,
    "latent_memory_residual_scale": 0.1,
    "latent_memory_slots": 4,
    "latent_memory_init_std": 0.002,
    "latent_gate_init": 0.01,
    "target_modules": ("self_attn",),
    "target_layers": (),
    "delta_heads": ("q", "k", "v", "o"),
    "delta_o_rmsnorm": False,
    "delta_o_rmsnorm_eps": 1e-6,
    "trainable_delta_scale": False,
    "delta_scale_init": 1.0,
    "delta_scale_max": 2.0,
    "delta_scale_granularity": "layer",
    "delta_scale_parameterization": "alpha_over_rank",
}

# Fields whose other values change the maths in ways this package does not implement
# (the reference's archived options, uncoupled λ, the o-head RMSNorm, a trainable scale).
_REFERENCE_FIXED: dict[str, Any] = {
    "normalize_qk": True,
    "couple_lambda": True,
    "num_memory_partitions": 1,
    "num_global_memory_partitions": 0,
    "memory_reader_layers": (),
    "latent_memory_layers": (),
    "memory_readout_mode": "delta",
    "memory_write_source": "learned_hidden",
    "target_modules": ("self_attn",),
    "delta_o_rmsnorm": False,
    "trainable_delta_scale": False,
}
