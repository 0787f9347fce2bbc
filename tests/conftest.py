"""Shared fixtures: the real embedded backbone, loaded once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from langchain_deltamem.backbones import load_backbone


@pytest.fixture(scope="session")
def embedded() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct from the embedded GGUF (converted once, then cached)."""
    return load_backbone()


@pytest.fixture
def smollm2(embedded) -> Iterator[tuple[PreTrainedModel, PreTrainedTokenizerBase]]:
    """The shared embedded backbone; any δ-mem left attached by a test is detached after it."""
    model, tokenizer = embedded
    yield model, tokenizer
    handle = getattr(model, "_deltamem_handle", None)
    if handle is not None:
        handle.detach()
    assert not any(p.requires_grad for p in model.parameters())
    torch.set_grad_enabled(True)
