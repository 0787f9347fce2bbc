"""Shared fixtures: the real embedded backbone (loaded once per test session), the engine and a
fresh memory on it, and the reliability tests' tiny engine.

A module that wants the tiny engine under the name ``engine`` overrides that fixture with one
returning ``tiny_engine``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from reliability_support import build_tiny_engine, register_engine, unregister_engine
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from langchain_deltamem.backbones import load_backbone
from langchain_deltamem.engine import DeltaMemEngine, get_engine
from langchain_deltamem.memory import DeltaMemory


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


@pytest.fixture(scope="module")
def engine() -> DeltaMemEngine:
    """The process's shared engine: the embedded backbone with the default adapter."""
    return get_engine()


@pytest.fixture
def memory(engine: DeltaMemEngine) -> DeltaMemory:
    """A memory of its own for each test (no scope leaks between tests) on ``engine``."""
    return DeltaMemory(engine)


@pytest.fixture(scope="module")
def tiny_engine(embedded: Any) -> Iterator[DeltaMemEngine]:
    """`reliability_support.build_tiny_engine`, registered so `ChatDeltaMem` finds it, on one
    thread while the module runs (bit-exact comparisons need one reduction order in every
    thread; the count is restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = build_tiny_engine(embedded[1])
    key = register_engine(engine)
    yield engine
    unregister_engine(key)
    torch.set_num_threads(threads)
