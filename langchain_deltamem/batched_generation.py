"""One decode loop for several prompts: a batched prefill, then one batched forward per step.

`generate_batch` is `generation.stream_generate` for ``B`` independent requests at once. The
prompts are left-padded into one ``[B, L]`` batch with a 2-D attention mask and explicit
position ids (each row counts its positions from its own first token, so a row computes what it
would alone); every step then feeds one token per row against the shared KV cache. Each row
keeps its own settings, sampler, logits processor (e.g. a forced tool call's JSON constraint),
stop strings and budget, and finishes on its own: a finished row's chunks and result are
delivered at once, and it rides along (its later tokens are ignored) until the batch ends.

On CPU, prefill is compute-bound (a batch costs the sum of its rows) while a decode step is
bound by reading the weights (eight rows cost about twice one row), so the batch pays off in
decoding. With a memory block over a `MemoryState` of ``B`` conversations, row ``i`` reads
conversation ``i``'s memory (padding reads nothing).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .generation import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    GenerationSettings,
    LogitsProcessor,
    _accepts,
    _model_device,
    _next_token,
    _prompt_ids,
    _TextStream,
    cache_kwargs,
    eos_token_ids,
    output_cache,
)


@dataclass
class BatchRequest:
    """One row of a batch: its prompt, settings, constraint, and where its chunks go.

    Attributes:
        input_ids: the prompt, ``[T]`` or ``[1, T]``.
        settings: see `GenerationSettings` (per row: budget, sampling, seed, stop strings).
        logits_processor: this row's constraint, if any.
        on_chunk: called (in the decoding thread) with each `GenerationChunk` of this row.
        on_done: called (in the decoding thread) as soon as this row ends, with its
            `GenerationResult` or the exception that ended it; the batch may go on.
    """

    input_ids: torch.Tensor
    settings: GenerationSettings
    logits_processor: LogitsProcessor | None = None
    on_chunk: Callable[[GenerationChunk], None] | None = None
    on_done: Callable[[GenerationResult | BaseException], None] | None = None


@dataclass
class _Row:
    request: BatchRequest
    prompt: torch.Tensor
    budget: int
    generator: torch.Generator
    text: _TextStream
    generated: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    outcome: GenerationResult | BaseException | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None


def check_prompt(model: Any, input_ids: torch.Tensor, settings: GenerationSettings) -> tuple:
    """``(prompt [T], budget)``: validate a request as `stream_generate` does (at submit time,
    so a bad request fails alone, before it joins a batch)."""
    if not isinstance(settings, GenerationSettings):
        raise TypeError(f"settings must be GenerationSettings, got {type(settings).__name__}")
    prompt = _prompt_ids(input_ids)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    budget = settings.max_tokens
    if isinstance(context, int):
        if prompt.numel() > context - 1:
            raise ValueError(
                f"the prompt has {prompt.numel()} tokens; the model's context of {context} "
                f"tokens leaves room for at most {context - 1} prompt tokens"
            )
        budget = min(budget, context - prompt.numel())
    return prompt, budget


def generate_batch(
    model: Any,
    tokenizer: Any,
    requests: Sequence[BatchRequest],
    *,
    memory: contextlib.AbstractContextManager[Any] | None = None,
    on_first_forward: Callable[[], None] | None = None,
    lock: contextlib.AbstractContextManager[Any] | None = None,
) -> list[GenerationResult | BaseException]:
    """Decode every request in one batch; returns each row's result, or the exception that
    ended that row alone (e.g. its logits processor failing). An error of the batch as a whole
    (a forward failing) is raised.

    Args:
        model, tokenizer: as `generation.stream_generate`.
        requests: the rows (at least one).
        memory: a context manager entered around the loop, e.g. ``handle.memory(state)`` with a
            state of ``len(requests)`` conversations (row ``i`` reads conversation ``i``).
        on_first_forward: called once after the prefill, inside the memory block.
        lock: held around each forward (e.g. `DeltaMemEngine.compute_lock`), so other work
            on the model can run between decode steps.
    """
    if not requests:
        raise ValueError("generate_batch needs at least one request")
    device = _model_device(model)
    rows = []
    for request in requests:
        prompt, budget = check_prompt(model, request.input_ids, request.settings)
        generator = torch.Generator(device=device)
        if request.settings.seed is None:
            generator.seed()
        else:
            generator.manual_seed(request.settings.seed)
        text = _TextStream(tokenizer, request.settings.stop)
        rows.append(
            _Row(request, prompt.to(device=device, dtype=torch.long), budget, generator, text)
        )
    eos = eos_token_ids(model, tokenizer)
    if memory is not None:
        memory.__enter__()
    exc_info: tuple[Any, Any, Any] = (None, None, None)
    try:
        _decode(model, rows, eos, device, on_first_forward, lock or contextlib.nullcontext())
    except BaseException:
        exc_info = sys.exc_info()
        raise
    finally:
        if memory is not None:
            memory.__exit__(*exc_info)
    return [row.outcome for row in rows]  # type: ignore[misc]


def _decode(
    model: Any,
    rows: list[_Row],
    eos: frozenset[int],
    device: torch.device,
    on_first_forward: Callable[[], None] | None,
    lock: contextlib.AbstractContextManager[Any],
) -> None:
    lengths = [row.prompt.numel() for row in rows]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)  # [B, L], left-padded
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        ids[i, width - lengths[i] :] = row.prompt
        mask[i, width - lengths[i] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [B, L]: each row from 0
    keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    with lock:
        logits, cache = _forward(model, ids, mask, positions, None, keep)
    if on_first_forward is not None:
        on_first_forward()
    next_position = torch.tensor(lengths, device=device)[:, None]  # [B, 1]
    while True:
        step = torch.zeros(len(rows), 1, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            if not row.done:
                step[i, 0] = _advance(row, logits[i], eos)
        if all(row.done for row in rows):
            return
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        with lock:
            logits, cache = _forward(model, step, mask, next_position, cache, {})
        next_position = next_position + 1


def _advance(row: _Row, logits: torch.Tensor, eos: frozenset[int]) -> int:
    """Pick the row's next token and deliver what became final; ends the row when due."""
    settings = row.request.settings
    try:
        token = _next_token(
            logits, row.generated, row.request.logits_processor, settings, row.generator
        )
        row.generated.append(token)
        row.pending.append(token)
        finish: FinishReason | None = None
        stopped = False
        if token in eos:
            finish = "stop"
        else:
            delta, stopped = row.text.push(row.generated)
            if delta:
                _deliver(row, delta)
            if stopped:
                finish = "stop"
            elif len(row.generated) >= row.budget:
                finish = "length"
        if finish is not None:
            tail = "" if stopped else row.text.flush()
            if tail:
                _deliver(row, tail)
            _finish(
                row,
                GenerationResult(
                    row.text.emitted, finish, row.prompt.numel(), len(row.generated), row.generated
                ),
            )
        return token
    except Exception as err:  # this row fails alone; the others go on
        _finish(row, err)
        return 0


def _finish(row: _Row, outcome: GenerationResult | BaseException) -> None:
    row.outcome = outcome
    if row.request.on_done is not None:
        row.request.on_done(outcome)


def _deliver(row: _Row, text: str) -> None:
    chunk = GenerationChunk(text, row.pending)
    row.pending = []
    if row.request.on_chunk is not None:
        row.request.on_chunk(chunk)


def _forward(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    extra: dict[str, Any],
) -> tuple[torch.Tensor, Any]:
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(model, cache),
            **extra,
        )
    return out.logits[:, -1], output_cache(out)
