"""The decode loop behind token streaming: prefill once, then one token per forward.

`stream_generate` runs a frozen Hugging Face causal LM by hand (not ``model.generate``): one
prefill forward over the prompt with ``use_cache=True``, then one forward per new token against
the KV cache, each under ``torch.inference_mode()``. It yields text deltas as soon as they are
final and returns a `GenerationResult` (the generator's return value)::

    def decode_quietly() -> None:      # runs after the prefill, inside the memory block
        handle.active_run().track_corrections = False

    stream = stream_generate(model, tokenizer, ids, GenerationSettings(max_tokens=64),
                             memory=handle.memory(state), on_first_forward=decode_quietly)
    for chunk in stream: ...          # GenerationChunk(text, token_ids)
    # the result is the generator's return value (StopIteration.value, or `yield from`);
    # generate(...) drains a stream and returns it

Text: the whole generated id list is decoded after every token (special tokens skipped) and the
new suffix is emitted (linear in the completion per token: fine for chat-length outputs),
except text that may still change: a trailing ``"\\ufffd"`` (an incomplete multi-byte
character) and the longest suffix that begins some stop string. So the stream never shows part
of a stop string, and the chunks concatenate to the final text.

Ending: an end token (``tokenizer.eos_token_id``, ``model.generation_config.eos_token_id`` and
``model.config.eos_token_id``, each an id or a list; SmolLM2's ``<|im_end|>``) or a stop string
finish with ``"stop"`` (the text is cut right before the stop string); ``max_tokens`` tokens, or
a full context window, finish with ``"length"``. The end token is not text but is counted in
``completion_tokens`` and ``token_ids``: it was generated.

Contexts: the memory block and every forward run inside a private ``contextvars`` context owned
by the stream, and inference mode is switched on per step. So nothing leaks to the consumer
between chunks (no active δ-mem run, no inference mode), and the stream may be resumed from
another thread or context (LangChain's default ``astream`` calls ``next`` through an executor,
in a fresh copy of the context each time): the forwards still read the memory. There is no
module-level mutable state; any number of streams may run on one model concurrently.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

REPLACEMENT_CHAR = "\ufffd"
FinishReason = Literal["stop", "length"]
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]
"""``processor(generated_ids, logits) -> logits``: ``generated_ids`` are the completion's ids so
far (prompt excluded), ``logits`` the next token's float32 ``[vocab]`` logits. Return logits of
the same shape with disallowed tokens at ``-inf`` (others finite); the result may be the input
modified in place. To end the generation, leave only an end token (see `eos_token_ids`)."""


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode. Invalid values raise ``ValueError`` naming the field.

    Attributes:
        max_tokens: most tokens to generate (>= 1); the end token counts.
        temperature: 0 = greedy (argmax); > 0 samples from ``softmax(logits / temperature)``.
        top_p: nucleus sampling, in ``(0, 1]``: sample among the most likely tokens whose
            probabilities sum to at least ``top_p`` (ignored when greedy).
        seed: seeds the stream's own ``torch.Generator`` (same seed, same text); None = fresh
            entropy. The global RNGs are never touched.
        stop: strings that end the generation; the text is cut right before the first one.
            Any sequence of non-empty strings (stored as a tuple).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_real(self.temperature) or not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            raise ValueError(f"seed must be None or an integer in [0, 2**64), got {self.seed!r}")
        stop = self.stop
        if isinstance(stop, str | bytes) or not isinstance(stop, Sequence):
            raise ValueError(f"stop must be a sequence of strings, got {stop!r}")
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "stop", tuple(stop))


@dataclass
class GenerationChunk:
    """A piece of streamed text and the ids generated since the previous chunk."""

    text: str
    token_ids: list[int]


@dataclass
class GenerationResult:
    """The whole generation.

    Attributes:
        text: the completion (the streamed chunks concatenated), cut before a stop string.
        finish_reason: ``"stop"`` (end token or stop string) or ``"length"`` (``max_tokens`` or
            the context window).
        prompt_tokens: tokens in the prompt.
        completion_tokens: tokens generated, the end token included.
        token_ids: the generated ids (``completion_tokens`` of them).
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Ids that end a generation: the tokenizer's EOS and the model's generation-config and
    config ``eos_token_id`` (each may be an int, a list, or missing)."""
    ids: set[int] = set()
    sources = (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(getattr(model, "config", None), "eos_token_id", None),
    )
    for value in sources:
        values = value if isinstance(value, list | tuple | set | frozenset) else [value]
        ids.update(int(v) for v in values if _is_int(v))
    return frozenset(ids)


def stream_generate(
    model: Any,
    tokenizer: Any,
    input_ids: torch.Tensor,
    settings: GenerationSettings,
    *,
    logits_processor: LogitsProcessor | None = None,
    memory: contextlib.AbstractContextManager[Any] | None = None,
    on_first_forward: Callable[[], None] | None = None,
    prefix_cache: Any | None = None,
) -> Generator[GenerationChunk, None, GenerationResult]:
    """Decode ``input_ids`` token by token; yields text chunks, returns the `GenerationResult`.

    Args:
        model: a Hugging Face causal LM (frozen; any dtype/device).
        tokenizer: its tokenizer (``decode`` and ``eos_token_id`` are used).
        input_ids: the prompt, ``[T]`` or ``[1, T]`` integer ids (one sequence).
        settings: see `GenerationSettings`.
        logits_processor: constrains decoding; applied before sampling (see `LogitsProcessor`).
        memory: a context manager entered around the whole loop, e.g. ``handle.memory(state)``
            (it must not write: the forwards run in inference mode). It is entered at the first
            ``next`` and exited when the stream ends, fails or is closed; it never suppresses
            exceptions.
        on_first_forward: called once after the prefill forward, inside the memory block (so
            ``handle.active_run()`` is the run there), e.g. to set ``track_corrections = False``
            for the decode steps.
        prefix_cache: a KV cache already holding a prompt prefix (e.g. a long conversation
            asked many questions); ``input_ids`` are then the tokens after it. The cache grows
            during decoding: crop it back to the prefix (``cache.crop(-added)``) to reuse it.

    Raises:
        ValueError: (at call time) empty prompt, more than one sequence, or a prompt longer
            than the model's context (``config.max_position_embeddings``) minus 1; (while
            streaming) a logits processor that returns a wrong shape, NaN or ``+inf``, or
            masks every token.
    """
    if not isinstance(settings, GenerationSettings):
        raise TypeError(f"settings must be GenerationSettings, got {type(settings).__name__}")
    prompt = _prompt_ids(input_ids)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    budget = settings.max_tokens
    cached = prefix_cache.get_seq_length() if prefix_cache is not None else 0
    prompt_length = prompt.numel() + cached
    if _is_int(context):
        if prompt_length > context - 1:
            raise ValueError(
                f"the prompt has {prompt_length} tokens; the model's context of {context} "
                f"tokens leaves room for at most {context - 1} prompt tokens"
            )
        budget = min(budget, context - prompt_length)  # prompt + completion fit the context
    device = _model_device(model)
    return _stream(
        model,
        tokenizer,
        prompt.to(device=device, dtype=torch.long),
        settings,
        budget,
        eos_token_ids(model, tokenizer),
        logits_processor,
        memory,
        on_first_forward,
        prefix_cache,
    )


def generate(
    model: Any,
    tokenizer: Any,
    input_ids: torch.Tensor,
    settings: GenerationSettings,
    *,
    logits_processor: LogitsProcessor | None = None,
    memory: contextlib.AbstractContextManager[Any] | None = None,
    on_first_forward: Callable[[], None] | None = None,
    prefix_cache: Any | None = None,
) -> GenerationResult:
    """`stream_generate` run to the end; returns its `GenerationResult`."""
    stream = stream_generate(
        model,
        tokenizer,
        input_ids,
        settings,
        logits_processor=logits_processor,
        memory=memory,
        on_first_forward=on_first_forward,
        prefix_cache=prefix_cache,
    )
    while True:
        try:
            next(stream)
        except StopIteration as done:
            return done.value


# --- the loop -------------------------------------------------------------------------------
def _stream(
    model: Any,
    tokenizer: Any,
    prompt: torch.Tensor,
    settings: GenerationSettings,
    budget: int,
    eos: frozenset[int],
    processor: LogitsProcessor | None,
    memory: contextlib.AbstractContextManager[Any] | None,
    on_first_forward: Callable[[], None] | None,
    prefix_cache: Any | None,
) -> Generator[GenerationChunk, None, GenerationResult]:
    ctx = contextvars.copy_context()  # private: the memory run lives here, not in the consumer's
    generator = torch.Generator(device=prompt.device)
    if settings.seed is None:
        generator.seed()
    else:
        generator.manual_seed(settings.seed)
    text = _TextStream(tokenizer, settings.stop)
    generated: list[int] = []
    pending: list[int] = []  # ids not yet reported in a chunk
    finish: FinishReason = "length"
    stopped = False  # by a stop string: the held-back text is dropped, not flushed
    if memory is not None:
        ctx.run(memory.__enter__)
    exc_info: tuple[Any, Any, Any] = (None, None, None)
    try:
        keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        logits, cache = ctx.run(_forward, model, prompt[None], prefix_cache, keep)
        if on_first_forward is not None:
            ctx.run(on_first_forward)
        while True:
            token = ctx.run(_next_token, logits, generated, processor, settings, generator)
            generated.append(token)
            pending.append(token)
            if token in eos:
                finish = "stop"
                break
            delta, stopped = text.push(generated)
            if delta:
                yield GenerationChunk(delta, pending)
                pending = []
            if stopped:
                finish = "stop"
                break
            if len(generated) >= budget:
                break
            step = torch.tensor([[token]], dtype=torch.long, device=prompt.device)
            logits, cache = ctx.run(_forward, model, step, cache, {})
        tail = "" if stopped else text.flush()
        if tail:
            yield GenerationChunk(tail, pending)
        result = GenerationResult(
            text.emitted, finish, prompt.numel(), len(generated), list(generated)
        )
    except BaseException:
        exc_info = sys.exc_info()
        raise
    finally:
        if memory is not None:
            ctx.run(memory.__exit__, *exc_info)
    return result


def _forward(
    model: Any, ids: torch.Tensor, cache: Any, extra: dict[str, Any]
) -> tuple[torch.Tensor, Any]:
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache), **extra)
    return out.logits[0, -1], output_cache(out)


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The KV-cache argument under the name the installed transformers reads: ``cache``
    (``past_key_values`` is deprecated, warns, and goes in transformers 5.40), or the old
    name for a model whose ``forward`` does not take ``cache``."""
    if cache is None:
        return {}
    return {"cache" if _accepts(model, "cache") else "past_key_values": cache}


def output_cache(out: Any) -> Any:
    """The KV cache of a forward's output, without touching the deprecated attribute."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out["past_key_values"]


def _next_token(
    logits: torch.Tensor,
    generated: list[int],
    processor: LogitsProcessor | None,
    settings: GenerationSettings,
    generator: torch.Generator,
) -> int:
    with torch.inference_mode():
        logits = logits.float()
        if processor is not None:
            shape = logits.shape
            logits = processor(list(generated), logits)
            if not isinstance(logits, torch.Tensor) or logits.shape != shape:
                raise ValueError(
                    f"logits_processor must return a tensor of shape {tuple(shape)}, got "
                    f"{getattr(logits, 'shape', type(logits).__name__)}"
                )
            logits = logits.float()
        best = logits.max()  # NaN if any is NaN: one reduction checks everything
        if not bool(torch.isfinite(best)):
            raise ValueError(
                f"the next token's logits have maximum {best.item()}: every token is masked "
                "(-inf), or a logit is NaN or +inf (mask tokens with -inf; keep others finite)"
            )
        if settings.temperature == 0:
            return int(torch.argmax(logits))
        # subtract the maximum first, so tiny temperatures cannot overflow to inf
        probs = torch.softmax((logits - best) / settings.temperature, dim=-1)
        if settings.top_p < 1:
            probs, order = torch.sort(probs, descending=True, stable=True)
            keep = (torch.cumsum(probs, dim=-1) - probs) < settings.top_p  # keeps the first
            choice = torch.multinomial(probs * keep, 1, generator=generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=generator))


class _TextStream:
    """Incremental detokenisation with stop strings: what may be emitted after each token."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self.emitted = ""
        self._text = ""

    def push(self, ids: list[int]) -> tuple[str, bool]:
        """Decode ``ids`` (all generated so far); returns (new text to emit, stop string hit)."""
        text = self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        if not text.startswith(self.emitted):
            # The decoding of a longer list is not an extension of a shorter one (rare, e.g.
            # a tokenizer that rewrites earlier text): keep what was emitted, it is out.
            text = self.emitted + text[len(self.emitted) :]
        self._text = text
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            return self._emit(cut), True
        safe = len(text) - self._stop_prefix_length(text)
        safe = min(safe, len(text.rstrip(REPLACEMENT_CHAR)))
        return self._emit(safe), False

    def flush(self) -> str:
        """At the end without a stop string: everything held back is final."""
        return self._emit(len(self._text))

    def _emit(self, end: int) -> str:
        delta = self._text[len(self.emitted) : end]
        self.emitted += delta
        return delta

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest


# --- helpers --------------------------------------------------------------------------------
def _prompt_ids(input_ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex:
        raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    if input_ids.dim() == 2:
        if input_ids.shape[0] != 1:
            raise ValueError(
                f"stream_generate decodes one sequence; input_ids has shape "
                f"{tuple(input_ids.shape)}"
            )
        input_ids = input_ids[0]
    elif input_ids.dim() != 1:
        raise ValueError(f"input_ids must be [T] or [1, T], got {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise ValueError("the prompt is empty: there is nothing to continue")
    return input_ids


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _accepts(model: Any, name: str) -> bool:
    return name in _forward_parameters(type(model))


@functools.cache
def _forward_parameters(model_type: type) -> frozenset[str]:
    """Parameter names of a model class's ``forward`` (looked up once per class: the decode
    loop asks on every step)."""
    try:
        return frozenset(inspect.signature(model_type.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        return frozenset()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
