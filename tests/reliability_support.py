"""Shared by the reliability tests (fuzzing, isolation under load, crash safety).

A real `DeltaMemEngine` on the embedded tokenizer (so chat templates and segment writes are the
real ones) but a tiny, seeded Llama backbone, so a write costs milliseconds instead of the
embedded model's half second. Its adapter is randomised (seeded) so that memory visibly
changes the logits: a read of the wrong scope cannot go unnoticed. The same seeds give the
same weights, fingerprints and states in every process (the crash tests rely on that).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from helpers import tiny_config
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from langchain_deltamem import engine as engine_module
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.injection import attach
from langchain_deltamem.state import MemoryState

TINY_BACKBONE = "tests/tiny-llama-on-smollm2-tokenizer"
TINY_CONTEXT = 2048
TINY_VOCAB = 1024  # token ids are folded into this many rows: a full-vocabulary output layer
# (49,152 × 64) would cost more than the rest of the model together


class FoldedEmbedding(nn.Module):
    """An embedding that accepts any token id (``id mod rows``), for the small vocabulary."""

    def __init__(self, inner: nn.Embedding) -> None:
        super().__init__()
        self.inner = inner

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(ids % self.inner.num_embeddings)


def build_tiny_engine(
    tokenizer: PreTrainedTokenizerBase,
    *,
    config: DeltaMemConfig | None = None,
    backbone_seed: int = 0,
    adapter_seed: int = 0,
    adapter_name: str = "fresh",
) -> DeltaMemEngine:
    """A 2-layer Llama (hidden 64) over the tokenizer (ids folded into ``TINY_VOCAB`` rows, so
    replies use the first ``TINY_VOCAB`` tokens) with a randomised adapter."""
    model_config = tiny_config("llama", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_CONTEXT)
    model_config.pad_token_id = tokenizer.pad_token_id
    model_config.bos_token_id = tokenizer.bos_token_id
    model_config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(backbone_seed)
    model = LlamaForCausalLM._from_config(model_config, dtype=torch.float32).eval()
    model.model.embed_tokens = FoldedEmbedding(model.model.embed_tokens)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    handle = attach(model, config or DeltaMemConfig(), seed=adapter_seed)
    generator = torch.Generator().manual_seed(1000 + adapter_seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return DeltaMemEngine(model, tokenizer, handle, TINY_BACKBONE, adapter_name)


def register_engine(engine: DeltaMemEngine) -> tuple[str, str, str]:
    """Make ``get_engine(TINY_BACKBONE, adapter_name)`` (hence `ChatDeltaMem`) use ``engine``."""
    key = (engine.backbone, engine.adapter, "float32")
    engine_module._ENGINES[key] = engine
    return key


def unregister_engine(key: tuple[str, str, str]) -> None:
    engine_module._ENGINES.pop(key, None)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    return digest(tensor.detach().contiguous().cpu().numpy().tobytes())


def prompt_ids(engine: DeltaMemEngine, text: str) -> torch.Tensor:
    """Token ids of a one-message chat prompt (for reads)."""
    encoded: Any = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    return encoded["input_ids"]


# Notes written in the batching and writing tests: short, a message pair, one long enough to be
# cut into pieces under small limits; states compared within TOL.
TOL = 1e-5
NOTES = [
    [{"role": "user", "content": "My locker code is 4471."}],
    [{"role": "user", "content": "The meeting moved to Thursday at noon, room B."}],
    [{"role": "user", "content": "Juniper is my cat."}, {"role": "assistant", "content": "Ok."}],
    [{"role": "user", "content": "A longer note about the garden and the river. " * 6}],
]


def max_difference(a: MemoryState, b: MemoryState) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.layers, b.layers, strict=True))
