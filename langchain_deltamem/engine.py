"""`DeltaMemEngine`: one loaded backbone + adapter, shared by everything in the process.

Loading weights is the expensive part, so chat models and memories only name what they need
(backbone, adapter, dtype) and get the engine for it from a process-wide registry on first use.
The engine holds no conversation: states live in `MemoryState` objects handed to each call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .adapter_files import load_adapter
from .backbones import EMBEDDED_BACKBONE, load_backbone
from .config import STRATEGIES, DeltaMemConfig
from .injection import AttachedAdapter, attach

FRESH_ADAPTERS = {
    "fresh": DeltaMemConfig(),
    **{f"fresh-{name}": DeltaMemConfig.for_strategy(name) for name in STRATEGIES},
}
PACKAGED_ADAPTERS: dict[str, tuple[str, int | None]] = {
    "smollm2-ssw": ("smollm2-135m-ssw", None),
    "smollm2-msw": ("smollm2-135m-ssw", 4),  # the SSW maps shared by 4 states (widen_states)
    "smollm2-tsw": ("smollm2-135m-tsw", None),  # token writes of content tokens, no forgetting
    "smollm2-msw-tsw": ("smollm2-135m-tsw", 4),  # the TSW maps shared by 4 states
}
"""Trained adapters inside the package (for the embedded backbone): name → (directory under
``langchain_deltamem/adapters``, number of states to load it with)."""
DEFAULT_ADAPTER = "smollm2-ssw"  # the default of the embedded backbone; others start fresh
FRESH_SEED = 0  # fixed, so a fresh adapter (and the memory it wrote) is the same in every process
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DeltaMemEngine:
    """A frozen backbone with its attached adapter.

    ``compute_lock`` is held around each serving forward (a decode step of a batch of replies,
    one forward of a memory write): on a CPU two forwards at once only fight over the same
    cores (each torch op spreads over all of them), so replies and background writes take
    turns, forward by forward.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    handle: AttachedAdapter
    backbone: str
    adapter: str
    compute_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 8192))


_ENGINES: dict[tuple[str, str, str], DeltaMemEngine] = {}
_LOCK = threading.Lock()


def get_engine(
    backbone: str | None = None,
    adapter: str | None = None,
    dtype: str = "float32",
) -> DeltaMemEngine:
    """The shared engine for ``(backbone, adapter, dtype)``, loading it on first use.

    Args:
        backbone: Hugging Face id or directory; None = the embedded SmolLM2-135M-Instruct.
        adapter: an adapter directory (own or reference format), a packaged trained adapter
            (``smollm2-ssw``, ``smollm2-msw``, ``smollm2-tsw``, ``smollm2-msw-tsw``: embedded
            backbone only), or one of
            ``fresh``/``fresh-ssw``/``fresh-tsw``/``fresh-msw`` (seeded, identical in every
            process); None = `default_adapter` of the backbone.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16`` for the backbone.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    backbone = backbone or EMBEDDED_BACKBONE
    key = (backbone, adapter or default_adapter(backbone), dtype)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _load(*key)
            _ENGINES[key] = engine
        return engine


def default_adapter(backbone: str | None) -> str:
    """The trained default for the embedded backbone; a fresh adapter for any other (a trained
    adapter only means something on the backbone it was trained with)."""
    return DEFAULT_ADAPTER if (backbone or EMBEDDED_BACKBONE) == EMBEDDED_BACKBONE else "fresh"


def packaged_adapter_path(name: str) -> Path:
    """The directory of the packaged adapter ``name`` (a key of `PACKAGED_ADAPTERS`)."""
    if name not in PACKAGED_ADAPTERS:
        raise ValueError(
            f"no packaged adapter {name!r}; expected one of {sorted(PACKAGED_ADAPTERS)}"
        )
    return Path(str(files("langchain_deltamem") / "adapters" / PACKAGED_ADAPTERS[name][0]))


def _load(backbone: str, adapter: str, dtype: str) -> DeltaMemEngine:
    name = None if backbone == EMBEDDED_BACKBONE else backbone
    model, tokenizer = load_backbone(name, dtype=_DTYPES[dtype])
    if adapter in FRESH_ADAPTERS:
        handle = attach(model, FRESH_ADAPTERS[adapter], seed=FRESH_SEED)
    elif adapter in PACKAGED_ADAPTERS:
        handle = load_adapter(
            model, packaged_adapter_path(adapter), num_states=PACKAGED_ADAPTERS[adapter][1]
        )
    else:
        handle = load_adapter(model, adapter)
    return DeltaMemEngine(model, tokenizer, handle, backbone, adapter)
