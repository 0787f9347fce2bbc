"""langchain-deltamem: δ-mem online memory for frozen Hugging Face LLMs.

The LangChain/LangGraph entry points, as partner packages have them at the root::

    from langchain_deltamem import ChatDeltaMem, DeltaMemory, DeltaMemMiddleware, GraphMemory

Data flow: config → memory state → scan → layer → injection → backbones → adapter files →
engine → memory → chat model → LangGraph integration. The LangChain names are imported on first
use (``langchain`` and ``langgraph`` add seconds to an import that only wants the engine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .adapter_files import AdapterFileError, load_adapter, read_adapter, save_adapter
from .backbones import EMBEDDED_BACKBONE, load_backbone
from .config import DeltaMemConfig
from .injection import AttachedAdapter, MemoryRun, UnsupportedModelError, attach, detach
from .segments import EncodedSegments, encode_segments
from .state import MemoryState, MemoryStateError

if TYPE_CHECKING:
    from .chat_model import ChatDeltaMem
    from .graph import DeltaMemState, GraphMemory, agent_node
    from .memory import DeltaMemory, MemoryLimitError, MemoryRecordError, MissingScopeError
    from .middleware import DeltaMemMiddleware

_LAZY = {
    "ChatDeltaMem": "chat_model",
    "DeltaMemory": "memory",
    "MemoryLimitError": "memory",
    "MemoryRecordError": "memory",
    "MissingScopeError": "memory",
    "DeltaMemState": "graph",
    "GraphMemory": "graph",
    "agent_node": "graph",
    "DeltaMemMiddleware": "middleware",
}

__all__ = [
    "EMBEDDED_BACKBONE",
    "AdapterFileError",
    "AttachedAdapter",
    "ChatDeltaMem",
    "DeltaMemConfig",
    "DeltaMemMiddleware",
    "DeltaMemState",
    "DeltaMemory",
    "EncodedSegments",
    "GraphMemory",
    "MemoryLimitError",
    "MemoryRecordError",
    "MemoryRun",
    "MemoryState",
    "MemoryStateError",
    "MissingScopeError",
    "UnsupportedModelError",
    "agent_node",
    "attach",
    "detach",
    "encode_segments",
    "load_adapter",
    "load_backbone",
    "read_adapter",
    "save_adapter",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_deltamem' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
