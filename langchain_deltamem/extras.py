"""Optional extras: what a feature needs beyond the lean base install, and a clear refusal.

``pip install langchain-deltamem`` brings the chat model, the memory and the LangGraph
integration. Training, evaluation, benchmarks and the database savers need more; each feature
checks for its extra before starting, so a missing package is named with the command that
installs it (not found as a ``ModuleNotFoundError`` halfway through a run).
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("matplotlib", "accelerate"),  # loss plots; multi-process training
    "eval": ("nltk",),  # LoCoMo's Porter stemmer
    "bench": ("matplotlib", "llguidance"),  # plots; the grammar engine comparison
    "sqlite": ("langgraph.store.sqlite", "langgraph.checkpoint.sqlite"),
    "postgres": ("psycopg", "psycopg_pool", "langgraph.store.postgres"),
}


class MissingExtraError(ImportError):
    """A feature's optional dependencies are not installed."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    return [name for name in EXTRAS[extra] if not _importable(name)]


def require(extra: str, feature: str) -> None:
    """Raise `MissingExtraError` naming the install command if ``extra`` is incomplete."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{feature} needs {', '.join(absent)}, not installed: "
            f"pip install 'langchain-deltamem[{extra}]'"
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
