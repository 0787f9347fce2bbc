"""`DeltaMemEngine`: one loaded backbone + adapter, shared by everything in the process.

Loading weights is the expensive part, so chat models and memories only name what they need
(backbone, adapter, dtype) and get the engine for it from a process-wide registry on first use.
The engine holds no conversation: states live in `MemoryState` objects handed to each call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

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
DEFAULT_ADAPTER = "fresh"  # until a trained adapter ships
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
        adapter: an adapter directory (own or reference format), or one of
            ``fresh``/``fresh-ssw``/``fresh-tsw``/``fresh-msw`` (seeded, identical in every
            process); None = the project's default adapter.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16`` for the backbone.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    key = (backbone or EMBEDDED_BACKBONE, adapter or DEFAULT_ADAPTER, dtype)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _load(*key)
            _ENGINES[key] = engine
        return engine


def _load(backbone: str, adapter: str, dtype: str) -> DeltaMemEngine:
    name = None if backbone == EMBEDDED_BACKBONE else backbone
    model, tokenizer = load_backbone(name, dtype=_DTYPES[dtype])
    if adapter in FRESH_ADAPTERS:
        handle = attach(model, FRESH_ADAPTERS[adapter], seed=FRESH_SEED)
    else:
        handle = load_adapter(model, adapter)
    return DeltaMemEngine(model, tokenizer, handle, backbone, adapter)
