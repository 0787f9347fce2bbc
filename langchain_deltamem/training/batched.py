"""Episodes in batches: the fast path of the trainer and of the content probe.

`episodes.episode_loss` runs one episode at a time: a forward per write call and one for the
read, each computing logits over every position. Here a whole batch goes through

* one padded forward of the decoder per write call index (episodes whose histories make the
  same number of write calls move together; a call only touches the rows that make it), with
  no language-model head, since writes need hidden states only;
* one padded read forward for every episode's question + answer, with the head applied only
  at the positions whose next token is scored;
* optionally bf16 autocast for the backbone's matmuls (the memory maths stays fp32).

With ``bf16=False`` the losses equal the per-episode reference within float tolerance
(`tests/test_training_batched.py`); the trainer and the probe use this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from transformers import DynamicCache

from ..episodes import Episode
from ..generation import cache_kwargs
from ..injection import AttachedAdapter
from ..prompts import history_messages, prompt_ids
from ..reading import answer_ids, question_ids
from ..segments import encode_segments
from ..state import MemoryState
from ..writing import MEMORY_SYSTEM_PROMPT, SourceRouter, turn_groups

Messages = Sequence[Mapping[str, str]]


@contextlib.contextmanager
def backbone_precision(bf16: bool) -> Iterator[None]:
    """bf16 autocast for the frozen backbone's matmuls on the CPU (≈2.5× on AVX512-BF16);
    the memory layer turns autocast off for its own maths."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        yield


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without it bf16
    autocast is emulated and slower than fp32 (2.7× per training step on an Ice Lake Xeon)."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


# --- write pass -----------------------------------------------------------------------------
def _pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    width = max(int(r.numel()) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row
    return out


def _routes(
    router: SourceRouter, groups: Sequence[Messages], num_states: int
) -> torch.Tensor | None:
    """``[B, S, H]`` MSW routing of each row's segments (False beyond a row's last segment)."""
    if num_states == 1:
        return None
    width = max(len(g) for g in groups)
    routes = torch.zeros(len(groups), width, num_states, dtype=torch.bool)
    for b, group in enumerate(groups):
        for s, message in enumerate(group):
            routes[b, s, router.state_for(str(message.get("source") or message["role"]))] = True
    return routes


def write_histories(
    handle: AttachedAdapter,
    tokenizer: object,
    histories: Sequence[Messages],
    *,
    router: SourceRouter | None = None,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    grad: bool = False,
    detach_inputs: bool = False,
    gate_log: list[torch.Tensor] | None = None,
    bf16: bool = False,
) -> MemoryState:
    """One state per history (``[B, …]``), written turn by turn as the chat model writes it.

    Same calls, segments and routing as `writing.write_history` per history; the c-th write
    call of every history that has one runs in one padded forward."""
    router = router or SourceRouter(handle.config.num_states)
    state = handle.new_state(len(histories))
    calls = [turn_groups(h) for h in histories]
    system = {"role": "system", "content": system_prompt}
    pad = int(getattr(tokenizer, "pad_token_id", None) or 0)
    with _writing_depth(handle):  # layers above the last adapted one write nothing
        for c in range(max((len(g) for g in calls), default=0)):
            rows = [b for b, groups in enumerate(calls) if len(groups) > c]
            groups = [calls[b][c] for b in rows]
            encoded = [
                encode_segments(
                    tokenizer,  # type: ignore[arg-type]
                    [system, *({"role": m["role"], "content": m["content"]} for m in g)],
                    content_only=handle.config.segment_tokens == "content",
                )
                for g in groups
            ]
            ids = _pad([e.input_ids[0] for e in encoded], pad)
            segments = _pad([e.segment_ids[0] for e in encoded], -1)
            mask = _pad([torch.ones_like(e.input_ids[0]) for e in encoded], 0)
            whole = len(rows) == len(histories)
            sub = state if whole else _rows_of(state, rows)
            # The first call reads an empty state, so its system prompt runs as the bare backbone:
            # once, shared by every row, instead of once per row.
            cache = _system_prefix(handle, ids, segments, bf16) if c == 0 else None
            if cache is not None:
                skip = cache.get_seq_length()
                ids, segments = ids[:, skip:], segments[:, skip:]
            with (
                torch.set_grad_enabled(grad),
                backbone_precision(bf16),
                handle.memory(
                    sub,
                    write=True,
                    segment_ids=segments.to(state.device),
                    routes=_routes(router, groups, handle.config.num_states),
                    collect_gates=gate_log is not None,
                    detach_inputs=detach_inputs,
                    track_corrections=False,
                ) as run,
            ):
                decoder = _decoder(handle)
                decoder(
                    ids.to(state.device),
                    attention_mask=mask.to(state.device),
                    use_cache=cache is not None,
                    **cache_kwargs(decoder, cache),
                )
            if gate_log is not None and run.gates:
                gate_log.extend(run.gates)
            if not whole:
                state = _put_rows(state, rows, sub)
    return state


@contextlib.contextmanager
def _writing_depth(handle: AttachedAdapter) -> Iterator[None]:
    """Run the write pass only up to the last adapted layer.

    Writes keep hidden states, never logits, and a layer above the last adapted one leaves no
    trace in any state, so an adapter on a subset of layers (``target_layers``) skips them.
    The decoder's layer list is shortened for the pass and restored after it: the model must
    not serve anything else meanwhile (the trainer and the diagnostics own it)."""
    decoder = _decoder(handle)
    layers = getattr(decoder, "layers", None)
    depth = max(handle.layer_ids) + 1
    if not isinstance(layers, torch.nn.ModuleList) or depth >= len(layers):
        yield
        return
    decoder.layers = layers[:depth]
    try:
        yield
    finally:
        decoder.layers = layers


def _system_prefix(
    handle: AttachedAdapter, ids: torch.Tensor, segments: torch.Tensor, bf16: bool
) -> DynamicCache | None:
    """The bare backbone's key/value cache of the unwritten prefix every row shares (the
    system prompt), repeated for each row; None when the rows share no such prefix."""
    unwritten = (segments < 0).all(0).long()
    shared = (ids == ids[:1]).all(0).long()
    length = int((unwritten * shared).cumprod(0).sum())
    if length == 0 or length == ids.shape[1] or ids.shape[0] == 1:
        return None
    device = handle.layers[handle.layer_ids[0]].memory_q_proj.device
    cache = DynamicCache()
    decoder = _decoder(handle)
    with torch.no_grad(), backbone_precision(bf16):
        decoder(ids[:1, :length].to(device), use_cache=True, **cache_kwargs(decoder, cache))
    cache.batch_repeat_interleave(ids.shape[0])
    return cache


def _rows_of(state: MemoryState, rows: list[int]) -> MemoryState:
    index = torch.tensor(rows, device=state.device)
    return MemoryState(
        [t.index_select(0, index) for t in state.layers],
        state.layer_ids,
        state.config,
        state.fingerprint,
        state.write_counts[rows].clone(),
    )


def _put_rows(state: MemoryState, rows: list[int], sub: MemoryState) -> MemoryState:
    index = torch.tensor(rows, device=state.device)
    counts = state.write_counts.clone()
    counts[rows] = sub.write_counts
    return MemoryState(
        [t.index_copy(0, index, s) for t, s in zip(state.layers, sub.layers, strict=True)],
        state.layer_ids,
        state.config,
        state.fingerprint,
        counts,
    )


def _decoder(handle: AttachedAdapter) -> torch.nn.Module:
    model = handle.model
    return model.get_decoder() if hasattr(model, "get_decoder") else model


# --- read pass ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoredBatch:
    """Prompts + answers, right-padded, and which next tokens are scored.

    Attributes:
        input_ids: ``[B, T]``.
        attention_mask: ``[B, T]``.
        positions: ``[N, 2]`` (row, position) whose *next* token is scored.
        targets: ``[N]`` the scored tokens.
        row_of: ``[N]`` the row of each scored token (for per-episode means).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor

    @property
    def row_of(self) -> torch.Tensor:
        return self.positions[:, 0]

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])


def score_batch(
    tokenizer: object, prompts: Sequence[torch.Tensor], answers: Sequence[torch.Tensor]
) -> ScoredBatch:
    """Right-pad ``prompt + answer`` per row; the answer tokens are scored."""
    rows = [torch.cat([p, a]) for p, a in zip(prompts, answers, strict=True)]
    pad = int(getattr(tokenizer, "pad_token_id", None) or 0)
    ids = _pad(rows, pad)
    mask = _pad([torch.ones_like(r) for r in rows], 0)
    positions, targets = [], []
    for b, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        for j in range(a.numel()):
            positions.append((b, p.numel() + j - 1))
            targets.append(int(a[j]))
    return ScoredBatch(ids, mask, torch.tensor(positions), torch.tensor(targets))


def question_batch(
    tokenizer: object,
    questions: Sequence[str],
    answers: Sequence[str],
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
) -> ScoredBatch:
    """The read pass's input: memory system prompt + question, then the answer (+ EOS)."""
    prompts = [question_ids(tokenizer, q, system_prompt)[0] for q in questions]
    return score_batch(tokenizer, prompts, [answer_ids(tokenizer, a) for a in answers])


def value_token_span(tokenizer: object, episode: Episode) -> tuple[int, int] | None:
    """``(first, end)``: which of the episode's answer tokens hold the stored value
    (``meta["value"]``, wherever an answer form put it); None for an episode without a
    recorded value or whose answer does not contain it (e.g. an autoencoding chat)."""
    value = episode.meta.get("value")
    start = episode.answer.find(value) if value and episode.kind != "autoencode" else -1
    if start < 0:
        return None
    stop = start + len(value)
    if not getattr(tokenizer, "is_fast", False):  # no offsets: count the lead-ins' tokens
        first = _lead_in_length(tokenizer, episode.answer, start)
        return first, max(first + 1, _lead_in_length(tokenizer, episode.answer, stop))
    encoded = tokenizer(  # type: ignore[operator]
        episode.answer, add_special_tokens=False, return_offsets_mapping=True
    )
    inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > start and a < stop]
    return (inside[0], inside[-1] + 1) if inside else None


def value_start_token(tokenizer: object, episode: Episode) -> int | None:
    """Index, among the episode's answer tokens, of the first token of the stored value
    (`value_token_span`); None where the answer does not hold a recorded value."""
    span = value_token_span(tokenizer, episode)
    return None if span is None else span[0]


def _lead_in_length(tokenizer: object, answer: str, start: int) -> int:
    """How many of the answer's tokens come before character ``start``: the longest
    tokenisation of the lead-in (with or without the space before the value, which some
    tokenizers give a token of its own) that the whole answer's tokens begin with."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False).input_ids)  # type: ignore[operator]

    whole = ids(answer)
    for lead_in in (answer[:start], answer[:start].rstrip()):
        head = ids(lead_in) if lead_in else []
        if whole[: len(head)] == head:
            return len(head)
    return len(ids(answer[:start].rstrip()))


def value_weights(
    tokenizer: object,
    episodes: Sequence[Episode],
    reads: ScoredBatch,
    start: float,
    rest: float = 1.0,
) -> torch.Tensor:
    """Per scored token ``[N]``: ``start`` at each episode's first value token, ``rest`` at
    the value's later tokens (`value_token_span`), 1 elsewhere."""
    per_row = torch.bincount(reads.row_of, minlength=reads.rows).tolist()
    weights = torch.ones(len(reads.targets))
    first = 0
    for episode, count in zip(episodes, per_row, strict=True):
        span = value_token_span(tokenizer, episode)
        if span is not None and span[0] < count:
            weights[first + span[0] + 1 : first + min(span[1], count)] = rest
            weights[first + span[0]] = start
        first += count
    return weights


def history_batch(
    tokenizer: object,
    histories: Sequence[Messages],
    questions: Sequence[str],
    answers: Sequence[str],
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
) -> ScoredBatch:
    """The teacher's input: the same prompt with the whole history before the question."""
    prompts = []
    for history, question in zip(histories, questions, strict=True):
        messages = [SystemMessage(system_prompt), *history_messages(history)]
        prompts.append(prompt_ids(tokenizer, [*messages, HumanMessage(question)])[0])
    return score_batch(tokenizer, prompts, [answer_ids(tokenizer, a) for a in answers])


def history_spans(
    tokenizer: object, histories: Sequence[Messages], system_prompt: str = MEMORY_SYSTEM_PROMPT
) -> list[tuple[int, int]]:
    """Where each history sits in its `history_batch` row: ``(first, end)`` token indices."""

    def length(messages: list[BaseMessage]) -> int:
        return int(prompt_ids(tokenizer, messages, add_generation_prompt=False).shape[1])

    system = [SystemMessage(system_prompt)]
    start = length(system)
    return [(start, length([*system, *history_messages(h)])) for h in histories]


def scored_logits(
    handle: AttachedAdapter,
    batch: ScoredBatch,
    state: MemoryState | None,
    *,
    bf16: bool = False,
) -> torch.Tensor:
    """fp32 logits ``[N, V]`` at the scored positions, reading ``state`` (None = the bare
    backbone). The head runs on those positions only (the vocabulary is ~20 % of the flops)."""
    device = handle.layers[handle.layer_ids[0]].memory_q_proj.device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    memory = (
        handle.memory(state, track_corrections=False)
        if state is not None
        else contextlib.nullcontext()
    )
    with memory, backbone_precision(bf16):
        hidden = _decoder(handle)(ids, attention_mask=mask, use_cache=False).last_hidden_state
        rows, cols = batch.positions[:, 0].to(device), batch.positions[:, 1].to(device)
        logits = handle.model.get_output_embeddings()(hidden[rows, cols])
    return logits.float()


def per_row_mean(
    values: torch.Tensor, batch: ScoredBatch, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of per-token ``values [N]`` within each row, weighted by ``weights [N]`` if
    given: ``[B]``."""
    rows = batch.row_of.to(values.device)
    weights = torch.ones_like(values) if weights is None else weights.to(values)
    sums = torch.zeros(batch.rows, dtype=values.dtype, device=values.device)
    counts = torch.zeros(batch.rows, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, rows, values * weights)
    counts = counts.index_add(0, rows, weights)
    return sums / counts.clamp_min(1e-12)


def token_nlls(
    handle: AttachedAdapter, batch: ScoredBatch, state: MemoryState | None, *, bf16: bool = False
) -> torch.Tensor:
    """NLL of every scored token ``[N]``."""
    logits = scored_logits(handle, batch, state, bf16=bf16)
    return F.cross_entropy(logits, batch.targets.to(logits.device), reduction="none")


def answer_nlls(
    handle: AttachedAdapter, batch: ScoredBatch, state: MemoryState | None, *, bf16: bool = False
) -> torch.Tensor:
    """Mean answer NLL per row ``[B]`` (as `reading.answer_nll` per episode)."""
    return per_row_mean(token_nlls(handle, batch, state, bf16=bf16), batch)


def permuted(state: MemoryState, order: Sequence[int]) -> MemoryState:
    """The rows of ``state`` in ``order`` (differentiable; e.g. swapped partners' states)."""
    return _rows_of(state, list(order))


# --- greedy replies -------------------------------------------------------------------------
@torch.no_grad()
def greedy_replies(
    handle: AttachedAdapter,
    tokenizer: object,
    prompts: Sequence[torch.Tensor],
    state: MemoryState | None,
    *,
    max_new_tokens: int = 16,
    bf16: bool = False,
) -> list[str]:
    """Greedy replies to left-padded prompts in one batched generation, reading ``state``
    (None = the bare backbone). Padding is masked, so a padded row reads and attends like an
    unpadded one (the probe's accuracy; the chat model decodes with its own loop)."""
    device = handle.layers[handle.layer_ids[0]].memory_q_proj.device
    width = max(int(p.numel()) for p in prompts)
    pad = int(getattr(tokenizer, "pad_token_id", None) or 0)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - prompt.numel() :] = prompt
        mask[i, width - prompt.numel() :] = 1
    memory = (
        handle.memory(state, track_corrections=False)
        if state is not None
        else contextlib.nullcontext()
    )
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    with memory, backbone_precision(bf16):
        out = handle.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
    return [
        tokenizer.decode(row[width:], skip_special_tokens=True).strip()  # type: ignore[attr-defined]
        for row in out
    ]
