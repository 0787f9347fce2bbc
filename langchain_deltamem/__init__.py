"""langchain-deltamem: δ-mem online memory for frozen Hugging Face LLMs.

Data flow: config → memory state → scan → layer → injection → backbones → adapter files.
"""

from .adapter_files import AdapterFileError, load_adapter, read_adapter, save_adapter
from .backbones import EMBEDDED_BACKBONE, load_backbone
from .config import DeltaMemConfig
from .injection import DeltaMem, MemoryRun, UnsupportedModelError, attach, detach
from .segments import EncodedSegments, encode_segments
from .state import MemoryState, MemoryStateError

__all__ = [
    "EMBEDDED_BACKBONE",
    "AdapterFileError",
    "DeltaMem",
    "DeltaMemConfig",
    "EncodedSegments",
    "MemoryRun",
    "MemoryState",
    "MemoryStateError",
    "UnsupportedModelError",
    "attach",
    "detach",
    "encode_segments",
    "load_adapter",
    "load_backbone",
    "read_adapter",
    "save_adapter",
]
