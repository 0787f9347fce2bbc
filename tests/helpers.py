"""Shared test utilities: tiny randomly initialised causal LMs, built offline from configs, and
the reference implementation's default config (`REFERENCE_DEFAULTS`), and where the LoCoMo data
is (`LOCOMO_DATA`).

Every model has 2 decoder layers, hidden size 64 and a 128-token vocabulary, so a forward pass
takes a few milliseconds on a CPU. The same ``(arch, seed)`` always gives the same weights,
whatever the attention implementation, so eager and sdpa copies can be compared.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

VOCAB_SIZE = 128
HIDDEN_SIZE = 64
NUM_LAYERS = 2
PAD_TOKEN_ID = 0

# Keys common to every architecture: 4 query heads and 2 key/value heads of width 16 (GQA).
_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 128,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "pad_token_id": PAD_TOKEN_ID,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _llama() -> tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]:
    return LlamaConfig, LlamaForCausalLM, {}


def _qwen2() -> tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]:
    # Qwen2 has biases on q/k/v: the correction is added to a biased projection.
    return Qwen2Config, Qwen2ForCausalLM, {}


def _qwen3() -> tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]:
    # Qwen3 normalises q and k per head (q_norm/k_norm) after the projection.
    return Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}


def _smollm3() -> tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]:
    # Layer 0 uses RoPE, layer 1 does not (SmolLM3's NoPE layers).
    return SmolLM3Config, SmolLM3ForCausalLM, {"no_rope_layers": [1, 0]}


def _mistral() -> tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]:
    # A sliding window far larger than the test sequences: Mistral's mask path, same maths.
    return MistralConfig, MistralForCausalLM, {"head_dim": 16, "sliding_window": 128}


def _gemma3() -> tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]:
    # Layer 0 attends through a sliding window of 6 tokens (shorter than most test sequences),
    # layer 1 globally; Gemma 3 also has q_norm/k_norm and scaled embeddings.
    extra = {
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 6,
        "layer_types": ["sliding_attention", "full_attention"],
    }
    return Gemma3TextConfig, Gemma3ForCausalLM, extra


ARCHITECTURES: dict[
    str, Callable[[], tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]]
] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "smollm3": _smollm3,
    "mistral": _mistral,
    "gemma3": _gemma3,
}
ARCH_NAMES = tuple(ARCHITECTURES)


def tiny_config(arch: str, **overrides: Any) -> PretrainedConfig:
    """The config of a tiny ``arch`` model (2 layers, hidden 64, vocab 128).

    The initializer range is raised from 0.02 to 0.2 so that the tiny models' logits are not
    all nearly equal (a near-constant model would hide differences between code paths).
    """
    config_cls, _, extra = ARCHITECTURES[arch]()
    return config_cls(**{**_COMMON, **extra, "initializer_range": 0.2, **overrides})


def build_model(arch: str, attn_implementation: str = "eager", *, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised tiny causal LM in fp32 eval mode (deterministic in ``seed``)."""
    _, model_cls, _ = ARCHITECTURES[arch]()
    config = tiny_config(arch)
    torch.manual_seed(seed)
    model = model_cls._from_config(
        config, attn_implementation=attn_implementation, dtype=torch.float32
    )
    model.eval()
    # generate() would otherwise warn about a missing generation config on every call.
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    return model


def random_tokens(
    batch: int, length: int, *, seed: int = 0, low: int = 3, high: int = VOCAB_SIZE
) -> torch.Tensor:
    """``[batch, length]`` token ids drawn from ``[low, high)`` (never pad/bos/eos)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (batch, length), generator=generator)


def left_pad(sequences: list[torch.Tensor], pad_id: int = PAD_TOKEN_ID) -> dict[str, torch.Tensor]:
    """Left-pad 1-D token tensors into ``input_ids``, ``attention_mask`` and ``position_ids``.

    ``position_ids = cumsum(mask) - 1`` clamped at 0, so every sequence's real tokens get the
    positions they would have alone.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq) :] = seq
        mask[i, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


# The reference implementation's ``delta_mem_config.json`` with every field at its default,
# written out here independently of the package so a drift in its table shows up.
# LoCoMo is evaluation data, never part of the repository: DELTAMEM_LOCOMO, else the project's
# shared data folder beside the checkout.
LOCOMO_DATA = Path(
    os.environ.get(
        "DELTAMEM_LOCOMO",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo10.json",
    )
)

REFERENCE_DEFAULTS: dict[str, Any] = {
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
    "memory_reader_layers": [],
    "memory_reader_hidden_size": 1024,
    "memory_reader_residual_scale": 0.1,
    "memory_reader_read_only": True,
    "memory_readout_mode": "delta",
    "memory_write_source": "learned_hidden",
    "memory_write_granularity": "token",
    "memory_write_proposals_per_message": 2,
    "synthetic_memory_slots": 1,
    "latent_memory_layers": [],
    "latent_memory_hidden_size": 1024,
    "latent_memory_residual_scale": 0.1,
    "latent_memory_slots": 4,
    "latent_memory_init_std": 0.002,
    "latent_gate_init": 0.01,
    "target_modules": ["self_attn"],
    "target_layers": [],
    "delta_heads": ["q", "k", "v", "o"],
    "delta_o_rmsnorm": False,
    "delta_o_rmsnorm_eps": 1e-6,
    "trainable_delta_scale": False,
    "delta_scale_init": 1.0,
    "delta_scale_max": 2.0,
    "delta_scale_granularity": "layer",
    "delta_scale_parameterization": "alpha_over_rank",
}
