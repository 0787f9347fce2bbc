"""langchain-deltamem: δ-mem online memory for frozen Hugging Face LLMs."""

from .config import DeltaMemConfig

__all__ = ["DeltaMemConfig"]
