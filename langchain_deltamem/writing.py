"""The write routine: chat messages → segment writes into a `MemoryState`.

This is the one procedure that puts text into memory, used by the chat model at run time and by
the trainer to build episodes (so training and inference write the same way; the reference
wrote one mean per message in training but token by token at run time). Per call:

* the messages are rendered with the chat template after the system prompt, one segment per
  message (system tokens are context for the forward but never written);
* a message longer than ``max_segment_tokens`` is cut into several segments, and calls are split
  so no forward exceeds ``max_forward_tokens`` (the backbone's context), with a warning;
* each segment is routed to the states its source owns (MSW): dialogue to state 0, each tool's
  results to its own state.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .injection import AttachedAdapter
from .segments import EncodedSegments, encode_segments
from .state import MemoryState

Progress = Callable[[int, int], None]

MEMORY_SYSTEM_PROMPT = (
    "You answer questions using earlier notes, passages, or dialogue history. Use exact details "
    "from them whenever possible. If they do not contain the answer, reply exactly: No "
    "information available."
)
DIALOGUE_SOURCES = ("user", "assistant", "system")


class WriteCancelled(RuntimeError):
    """A write stopped by its ``cancel`` event before it finished."""


@dataclass(frozen=True)
class SourceRouter:
    """Which MSW states a segment from a given source writes.

    Dialogue (``user``, ``assistant``) writes state 0. A tool's results (source ``tool:<name>``)
    write the state given in ``tool_states``, else a stable hash of the name picks one of states
    ``1..H-1``, so a tool keeps its state across processes. With ``H = 1`` everything writes the
    single state.
    """

    num_states: int = 1
    tool_states: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, index in self.tool_states.items():
            if not 0 <= index < self.num_states:
                raise ValueError(
                    f"tool_states[{name!r}] = {index}: states are 0..{self.num_states - 1}"
                )

    def state_for(self, source: str) -> int:
        if self.num_states == 1 or source in DIALOGUE_SOURCES:
            return 0
        name = source.split(":", 1)[1] if source.startswith("tool:") else source
        if name in self.tool_states:
            return self.tool_states[name]
        return 1 + zlib.crc32(name.encode()) % (self.num_states - 1)


@dataclass(frozen=True)
class WrittenSegment:
    """One segment as it went into memory (what a replay needs)."""

    source: str
    text: str


def parse_tool_states(items: Sequence[str]) -> dict[str, int]:
    """``["search=1", "calendar=2"]`` (command-line ``--tool-state``) → ``{"search": 1, ...}``."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, index = item.partition("=")
        if not sep or not name or not index.strip().isdigit():
            raise ValueError(f"tool state {item!r}: expected TOOL=INDEX, e.g. search=1")
        out[name] = int(index)
    return out


def write_messages(
    handle: AttachedAdapter,
    tokenizer: PreTrainedTokenizerBase,
    state: MemoryState,
    messages: Sequence[Mapping[str, str]],
    *,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    router: SourceRouter | None = None,
    max_segment_tokens: int = 1024,
    max_forward_tokens: int | None = None,
    grad: bool = False,
    gate_log: list[torch.Tensor] | None = None,
    detach_inputs: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    warn: bool = True,
    lock: contextlib.AbstractContextManager[Any] | None = None,
) -> list[WrittenSegment]:
    """Write ``messages`` into ``state`` (batch of one), one segment per message.

    Args:
        handle: the attached δ-mem.
        tokenizer: the backbone's tokenizer (its chat template defines segment boundaries).
        state: memory of one conversation; replaced layer by layer.
        messages: ``{"role", "content"}`` dicts, optionally with ``"source"`` (default: the
            role; tool results use ``tool:<name>``). Roles must be ones the template renders.
        system_prompt: rendered first as context; never written.
        router: MSW routing by source (default: a `SourceRouter` for the adapter's H).
        max_segment_tokens: longer message contents are cut into pieces of about this many
            tokens, each its own segment.
        max_forward_tokens: cap on one forward (default: the backbone's context length).
        grad: keep the autograd graph through the state (training); else ``no_grad``.
        gate_log: when given, each layer's mean write gate is appended (training's
            write-sparsity penalty).
        detach_inputs: with ``grad``, keep gradients in the write maths only (see
            `AttachedAdapter.memory`); much cheaper to train, the write pass's backward skips the
            backbone.
        progress: called after each forward with (tokens written, tokens to write).
        cancel: checked before each forward; once set, `WriteCancelled` is raised (the state
            then holds the forwards already run: write into a copy to discard them).
        warn: warn about messages written in pieces (off when that was said at queue time).
        lock: held around each forward (e.g. `DeltaMemEngine.compute_lock`).

    Returns:
        The segments written, in order (the replay log).
    """
    if state.batch_size != 1:
        raise ValueError(
            f"write_messages writes one conversation; the state holds {state.batch_size}"
        )
    router = router or SourceRouter(handle.config.num_states)
    if max_forward_tokens is None:
        max_forward_tokens = int(getattr(handle.model.config, "max_position_embeddings", 8192))
    forwards = plan_forwards(
        tokenizer,
        messages,
        system_prompt,
        router,
        max_segment_tokens,
        max_forward_tokens,
        warn,
        content_only=handle.config.segment_tokens == "content",
    )
    total = sum(f.tokens for f in forwards)
    done = 0
    written: list[WrittenSegment] = []
    for forward in forwards:
        if cancel is not None and cancel.is_set():
            raise WriteCancelled(f"write cancelled after {done} of {total} tokens")
        with lock or contextlib.nullcontext():
            _forward_write(
                handle,
                state,
                forward.encoded.input_ids,
                forward.encoded.segment_ids,
                forward.routes,
                grad,
                gate_log,
                detach_inputs,
            )
        written.extend(forward.segments)
        done += forward.tokens
        if progress is not None:
            progress(done, total)
    return written


@dataclass(frozen=True)
class PlannedForward:
    """One write forward: the rendered tokens, their routes, and the segments they hold."""

    encoded: EncodedSegments
    routes: list[list[int]]
    segments: list[WrittenSegment]

    @property
    def tokens(self) -> int:
        return int(self.encoded.input_ids.shape[1])


def plan_forwards(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    system_prompt: str,
    router: SourceRouter,
    max_segment_tokens: int,
    max_forward_tokens: int,
    warn: bool = True,
    content_only: bool = False,
) -> list[PlannedForward]:
    """The forwards `write_messages` runs for ``messages`` (long ones cut, calls split to fit
    the context), so a batched write runs exactly the same ones."""
    pieces = _split_long_messages(tokenizer, messages, max_segment_tokens, warn)
    system = {"role": "system", "content": system_prompt}
    out = []
    for group in _group_for_context(tokenizer, system, pieces, max_forward_tokens):
        encoded = encode_segments(
            tokenizer,
            [system, *({"role": m["role"], "content": m["content"]} for m in group)],
            content_only=content_only,
        )
        routes = [[router.state_for(m["source"])] for m in group]
        out.append(
            PlannedForward(
                encoded, routes, [WrittenSegment(m["source"], m["content"]) for m in group]
            )
        )
    return out


def write_messages_batch(
    handle: AttachedAdapter,
    tokenizer: PreTrainedTokenizerBase,
    states: Sequence[MemoryState],
    messages: Sequence[Sequence[Mapping[str, str]]],
    *,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    router: SourceRouter | None = None,
    max_segment_tokens: int = 1024,
    max_forward_tokens: int | None = None,
    warn: bool = True,
    lock: contextlib.AbstractContextManager[Any] | None = None,
) -> list[list[WrittenSegment]]:
    """`write_messages` for several conversations at once: conversation ``i``'s messages into
    ``states[i]`` (each a batch of one), as batched forwards.

    Each conversation runs the forwards `write_messages` would run for it; the ``k``-th
    forwards of all conversations that have one go together, right-padded (padding comes after
    every real token, so causal attention keeps it out of their hidden states, and it writes
    nothing). The written states equal separate writes up to float rounding.
    """
    if len(states) != len(messages):
        raise ValueError(f"{len(states)} states for {len(messages)} message lists")
    for i, state in enumerate(states):
        if state.batch_size != 1:
            raise ValueError(f"states[{i}] holds {state.batch_size} conversations; give one each")
    router = router or SourceRouter(handle.config.num_states)
    if max_forward_tokens is None:
        max_forward_tokens = int(getattr(handle.model.config, "max_position_embeddings", 8192))
    plans = [
        plan_forwards(
            tokenizer,
            group,
            system_prompt,
            router,
            max_segment_tokens,
            max_forward_tokens,
            warn,
            content_only=handle.config.segment_tokens == "content",
        )
        for group in messages
    ]
    for step in range(max((len(p) for p in plans), default=0)):
        rows = [i for i, plan in enumerate(plans) if step < len(plan)]
        with lock or contextlib.nullcontext():
            _forward_write_batch(handle, [states[i] for i in rows], [plans[i][step] for i in rows])
    return [[seg for forward in plan for seg in forward.segments] for plan in plans]


def _forward_write_batch(
    handle: AttachedAdapter, states: list[MemoryState], forwards: list[PlannedForward]
) -> None:
    if len(states) == 1:
        forward = forwards[0]
        encoded = forward.encoded
        _forward_write(
            handle, states[0], encoded.input_ids, encoded.segment_ids, forward.routes, False
        )
        return
    device = states[0].device
    width = max(f.tokens for f in forwards)
    n_segments = max(len(f.routes) for f in forwards)
    n_states = handle.config.num_states
    ids = torch.zeros(len(forwards), width, dtype=torch.long)  # [B, T], right-padded
    mask = torch.zeros(len(forwards), width, dtype=torch.long)
    segments = torch.full((len(forwards), width), -1, dtype=torch.long)
    routes = torch.zeros(len(forwards), n_segments, n_states, dtype=torch.bool)  # [B, S, H]
    for i, forward in enumerate(forwards):
        length = forward.tokens
        ids[i, :length] = forward.encoded.input_ids[0]
        mask[i, :length] = 1
        segments[i, :length] = forward.encoded.segment_ids[0]
        for s, targets in enumerate(forward.routes):
            routes[i, s, targets] = True
    batch = MemoryState.concat(states)
    with (
        torch.no_grad(),
        handle.memory(
            batch,
            write=True,
            segment_ids=segments.to(device),
            routes=routes if n_states > 1 else None,
        ),
    ):
        handle.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    for i, state in enumerate(states):  # hand each conversation its row, in place
        state.layers[:] = [t[i : i + 1] for t in batch.layers]
        state.write_counts = batch.write_counts[i : i + 1]


def _forward_write(
    handle: AttachedAdapter,
    state: MemoryState,
    input_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    routes: list[list[int]],
    grad: bool,
    gate_log: list[torch.Tensor] | None = None,
    detach_inputs: bool = False,
) -> None:
    model: nn.Module = handle.model
    device = state.device
    use_routes = handle.config.num_states > 1
    with (
        torch.set_grad_enabled(grad),
        handle.memory(
            state,
            write=True,
            segment_ids=segment_ids.to(device),
            routes=routes if use_routes else None,
            collect_gates=gate_log is not None,
            detach_inputs=detach_inputs,
        ) as run,
    ):
        model(input_ids.to(device), use_cache=False)
    if gate_log is not None and run.gates:
        gate_log.extend(run.gates)


def _split_long_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    max_tokens: int,
    warn: bool = True,
) -> list[dict[str, str]]:
    out = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(
                f"message {i} needs a text 'role' and 'content', got {dict(message)!r}"
            )
        if role == "system":
            raise ValueError(f"message {i}: system messages are instructions, not memory")
        source = str(message.get("source") or role)
        ids = tokenizer(content, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            out.append({"role": role, "content": content, "source": source})
            continue
        if warn:
            warnings.warn(
                f"message {i} ({len(ids)} tokens) is longer than {max_tokens} tokens; it is "
                "written to memory in pieces",
                stacklevel=4,
            )
        for start in range(0, len(ids), max_tokens):
            piece = tokenizer.decode(ids[start : start + max_tokens])
            out.append({"role": role, "content": piece, "source": source})
    return out


def _group_for_context(
    tokenizer: PreTrainedTokenizerBase,
    system: dict[str, str],
    pieces: list[dict[str, str]],
    max_tokens: int,
) -> list[list[dict[str, str]]]:
    """Consecutive pieces whose rendering fits one forward pass."""
    overhead = encode_segments(tokenizer, [system]).input_ids.shape[1]
    groups: list[list[dict[str, str]]] = []
    current: list[dict[str, str]] = []
    used = overhead
    for piece in pieces:
        cost = len(tokenizer(piece["content"], add_special_tokens=False)["input_ids"]) + 8
        if current and used + cost > max_tokens:
            groups.append(current)
            current, used = [], overhead
        current.append(piece)
        used += cost
    if current:
        groups.append(current)
    return groups


def turn_groups(messages: Sequence[Mapping[str, str]]) -> list[list[Mapping[str, str]]]:
    """Split a history into the write calls a chat model makes while living through it.

    `ChatDeltaMem` writes after each reply: the messages it was handed that memory did not
    hold yet (user messages, tool results) plus its reply. So each group ends at an assistant
    message; messages after the last one form a final group. The trainer writes episodes in
    exactly these calls, so training and run time build the same state.
    """
    groups: list[list[Mapping[str, str]]] = []
    current: list[Mapping[str, str]] = []
    for message in messages:
        current.append(message)
        if message.get("role") == "assistant":
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def write_history(
    handle: AttachedAdapter,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    *,
    router: SourceRouter | None = None,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    grad: bool = False,
    gate_log: list[torch.Tensor] | None = None,
    detach_inputs: bool = False,
) -> MemoryState:
    """A new state holding ``messages``, written turn by turn as the chat model writes them
    (`turn_groups`, then `write_messages` per call): how training and evaluation build the
    memory of an episode or a conversation."""
    state = handle.new_state()
    for group in turn_groups(messages):
        write_messages(
            handle,
            tokenizer,
            state,
            group,
            system_prompt=system_prompt,
            router=router,
            grad=grad,
            gate_log=gate_log,
            detach_inputs=detach_inputs,
        )
    return state


def warn_long_messages(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], max_tokens: int
) -> None:
    """The "written in pieces" warnings of a write, given when it is queued (in the caller's
    thread, where they can be seen) rather than when it runs."""
    _split_long_messages(tokenizer, messages, max_tokens)
