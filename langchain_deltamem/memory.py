"""`DeltaMemory`: δ-mem as a LangChain/LangGraph component, kept per scope.

A *scope* is one conversation's memory: by default the ``thread_id`` of the run config, or a name
given explicitly. Per scope the memory holds a `MemoryState` (constant size), the log of the
segments written (source + text, so a segment can be forgotten by replaying the log without it),
and the keys of the messages already written (so a chat model handed the whole history writes
only what is new). Everything a scope holds serialises to JSON-safe values, which is what a
LangGraph `BaseStore` (InMemoryStore, SqliteStore, …) persists.

Operations on one scope are serialised by a per-scope lock; different scopes run concurrently
(the model's forward passes are read-only and the active state is a context variable). With a
store, several processes may serve one scope: every operation reads the scope's record from the
store afresh, and every change runs under a cross-process lock (`store_locks`), so a write is
always applied to the latest stored record and none is lost.

There is no implicit shared scope: an operation without a scope or thread id is refused unless
the memory was built with an explicit ``default_scope``.

Writes off the reply's path: `write_later` puts a turn's messages into the scope's *pending*
list (and, with a store, into the stored record, before it returns) and leaves the forward to a
background writer, which applies the pending writes of several scopes as one batched forward.
Every other operation on a scope first applies that scope's pending writes (in order), so a
conversation always sees its own last turn, while other scopes never wait for it. A record
stored with pending writes (the process died before applying them) gets them applied when it is
next used: the state and its pending list are stored together, so nothing is lost and nothing
is applied twice. `flush` applies everything pending now; live memories flush at process exit.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import dataclasses
import hashlib
import json
import logging
import queue
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManager, Callbacks
from langchain_core.messages import AIMessage, BaseMessage, FunctionMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.store.base import BaseStore

from .engine import DeltaMemEngine, get_engine
from .injection import MemoryRun
from .prompts import content_text, message_role
from .records import CHECKSUM, RecordFormat, checksum_mismatch, checksum_of
from .state import MemoryState, MemoryStateError
from .store_locks import ScopeLock, scope_lock_for
from .tool_calling import format_tool_call
from .writing import (
    MEMORY_SYSTEM_PROMPT,
    Progress,
    SourceRouter,
    WrittenSegment,
    warn_long_messages,
    write_messages,
    write_messages_batch,
)

SCOPE_FORMAT = "langchain-deltamem/scope"
SCOPE_VERSION = 1
DEFAULT_NAMESPACE = ("deltamem", "memory")
SNAPSHOT_FORMAT = "langchain-deltamem/snapshot"
SNAPSHOT_KEYS = 64  # message keys a snapshot keeps: enough to line up any prompt window
_KEY_HISTORY = 256  # message keys remembered for new-message detection (bounded)
_KEY_PATTERN = re.compile(r"[0-9a-f]{16}")  # what `message_key` gives
_PENDING = "pending"  # optional in records: write calls logged but not yet in the state
WRITE_PROGRESS_EVENT = "deltamem_write_progress"
_PROGRESS_FROM = 4096  # tokens: a write at least this long shows a progress bar on a terminal
_LOGGER = logging.getLogger(__name__)
_LOG_ROLES = ("user", "assistant", "tool")  # system messages are never written


class MemoryRecordError(ValueError):
    """A stored or imported scope record that is corrupt or belongs to another model."""


class MemoryLimitError(ValueError):
    """A write or a new scope beyond one of the memory's configured caps."""


class MissingScopeError(ValueError):
    """A call named no scope (nor thread id) and no default scope was set."""


@dataclass
class _Scope:
    state: MemoryState
    log: list[list[dict[str, str]]] = field(default_factory=list)  # one list per write call
    keys: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    last_ratio: dict[int, dict[str, float]] = field(default_factory=dict)
    pending: list[list[dict[str, str]]] = field(default_factory=list)  # logged, not yet written
    # (state bytes, pending calls) the state was last settled from: a snapshot taken before or
    # after the background write is then the same record (process-local, never stored)
    origin: tuple[bytes, list[list[dict[str, str]]]] | None = None


def message_to_dict(message: BaseMessage | Mapping[str, Any]) -> dict[str, str]:
    """A LangChain message (or ``{"role", "content"}`` dict) as a memory segment.

    Tool results get the source ``tool:<name>`` (their own MSW state); an AI message's tool calls
    are kept as text (`tool_calling.format_tool_call`, as the training episodes write them) so
    the memory knows what was asked. Content follows the prompt's rules
    (`prompts.content_text`): reasoning and tool-call blocks are skipped, media blocks and
    unknown roles raise ValueError.
    """
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant", "tool", "system"):
            raise ValueError(f"unknown message role {role!r}; expected user/assistant/tool/system")
        source = str(message.get("source") or role)
        return {"role": role, "content": content_text(content, role), "source": source}
    if isinstance(message, ToolMessage | FunctionMessage):
        name = message.name or "tool"
        text = content_text(message.content, "tool")
        return {"role": "tool", "content": text, "source": f"tool:{name}"}
    role = message_role(message)
    text = content_text(message.content, role)
    if isinstance(message, AIMessage):
        calls = [format_tool_call(c["name"], c["args"]) for c in message.tool_calls]
        text = "\n".join(p for p in [text, *calls] if p)
    return {"role": role, "content": text, "source": role}


def message_key(message: Mapping[str, str]) -> str:
    """Identity of a message for "already written?" checks (role, source and text)."""
    body = json.dumps([message["role"], message["source"], message["content"]])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


class DeltaMemory:
    """The memory a `ChatDeltaMem` reads and writes, usable on its own.

    Args:
        engine: the backbone + adapter to write with (default: the shared engine of the embedded
            backbone and default adapter, loaded on first use).
        store: a LangGraph `BaseStore` to persist scopes in (survives restarts); None keeps
            them in this process only.
        namespace: the store namespace prefix; the scope name is the item key.
        router: MSW routing of sources to states (default: dialogue → 0, tools hashed).
        system_prompt: the context rendered before every write (never written itself).
        max_segment_tokens: longer messages are written as several segments of this size.
        max_message_chars: cap on one message's text (None = no cap); larger messages are
            refused before anything is written.
        max_segments_per_write: cap on the messages of one write call (None = no cap).
        max_scopes: cap on the scopes this process holds (None = no cap); a new scope past
            it is refused (existing ones keep working).
        default_scope: the scope of a call that names none and has no thread id. None (the
            default) refuses such calls: a server that forgets the config must not mix its
            users' memories in one shared scope.
        write_batch_size: most scopes whose pending writes the background writer applies in
            one batched forward.
        write_wait: seconds the background writer waits for more scopes to batch with.
    """

    def __init__(
        self,
        engine: DeltaMemEngine | None = None,
        *,
        store: BaseStore | None = None,
        namespace: tuple[str, ...] = DEFAULT_NAMESPACE,
        router: SourceRouter | None = None,
        system_prompt: str = MEMORY_SYSTEM_PROMPT,
        max_segment_tokens: int = 1024,
        max_message_chars: int | None = 1_000_000,
        max_segments_per_write: int | None = 1024,
        max_scopes: int | None = 100_000,
        default_scope: str | None = None,
        write_batch_size: int = 8,
        write_wait: float = 0.005,
    ) -> None:
        self._engine = engine
        self.store = store
        self.namespace = tuple(namespace)
        self._router = router
        self.system_prompt = system_prompt
        self.max_segment_tokens = max_segment_tokens
        for name, cap in (
            ("max_message_chars", max_message_chars),
            ("max_segments_per_write", max_segments_per_write),
            ("max_scopes", max_scopes),
        ):
            if cap is not None and (not isinstance(cap, int) or cap < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {cap!r}")
        self.max_message_chars = max_message_chars
        self.max_segments_per_write = max_segments_per_write
        self.max_scopes = max_scopes
        if default_scope is not None:
            self.scope_of(None, default_scope)  # the same checks as an explicit scope
        self.default_scope = default_scope
        self._scopes: dict[str, _Scope] = {}
        self._lock = threading.Lock()
        self._store_lock: ScopeLock = scope_lock_for(store)
        if not isinstance(write_batch_size, int) or write_batch_size < 1:
            raise ValueError(f"write_batch_size must be an integer >= 1, got {write_batch_size!r}")
        if not isinstance(write_wait, int | float) or not 0 <= write_wait <= 10:
            raise ValueError(f"write_wait must be seconds in [0, 10], got {write_wait!r}")
        self.write_batch_size = write_batch_size
        self.write_wait = float(write_wait)
        self._writes: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        _LIVE.add(self)

    # --- plumbing -----------------------------------------------------------------------
    @property
    def engine(self) -> DeltaMemEngine:
        if self._engine is None:
            self._engine = get_engine()
        return self._engine

    @property
    def router(self) -> SourceRouter:
        if self._router is None:
            self._router = SourceRouter(self.engine.handle.config.num_states)
        return self._router

    @staticmethod
    def scope_of(
        config: RunnableConfig | None = None,
        scope: str | None = None,
        default: str | None = None,
    ) -> str:
        """An explicit scope, else the run's ``thread_id``, else ``default``; with none of
        them, `MissingScopeError` (never an implicit shared scope)."""
        if scope is not None:
            if not isinstance(scope, str) or not scope:
                raise ValueError(f"scope must be a non-empty string, got {scope!r}")
            return scope
        thread = ((config or {}).get("configurable") or {}).get("thread_id")
        if thread is not None and thread != "":
            return str(thread)
        if default is not None:
            return default
        raise MissingScopeError(
            "no memory scope: pass scope=... or config={'configurable': {'thread_id': ...}}, "
            "or build the memory (DeltaMemory(default_scope=...) or "
            "ChatDeltaMem(default_scope=...)) with an explicit default scope"
        )

    def _name(self, config: RunnableConfig | None, scope: str | None) -> str:
        return self.scope_of(config, scope, self.default_scope)

    @contextmanager
    def _scope(
        self,
        scope: str,
        *,
        change: bool = False,
        settle: bool = True,
        progress: Progress | None = None,
    ) -> Iterator[_Scope]:
        """Hold the scope in this process (and, for a ``change``, in every process sharing the
        store) with its record as the store has it now; with ``settle`` (every operation but
        queueing a write), its pending writes are applied first (a change too)."""
        with self._lock:
            record = self._scopes.get(scope)
            fresh = record is None
            if record is None:
                if self.max_scopes is not None and len(self._scopes) >= self.max_scopes:
                    raise MemoryLimitError(
                        f"this memory already holds {len(self._scopes)} scopes "
                        f"(max_scopes={self.max_scopes}); scope {scope!r} is refused"
                    )
                record = self._load(scope)
                self._scopes[scope] = record
        with record.lock, ExitStack() as held:
            if change:
                held.enter_context(self._store_lock.hold(self.namespace, scope))
            if self.store is not None and (change or not fresh):
                self._refresh(scope, record)  # another process may have written since
            if settle and record.pending:
                if not change and self.store is not None:
                    held.enter_context(self._store_lock.hold(self.namespace, scope))
                    self._refresh(scope, record)
                if record.pending:
                    self._settle([(scope, record)], progress)
            yield record

    def _refresh(self, scope: str, record: _Scope) -> None:
        """Bring the held record up to the store's latest version of it."""
        latest = self._load(scope)
        if latest.state.to_bytes() != record.state.to_bytes() or latest.pending != record.pending:
            record.origin = None
        record.state, record.log, record.keys = latest.state, latest.log, latest.keys
        record.pending = latest.pending

    def _load(self, scope: str) -> _Scope:
        if self.store is not None:
            try:
                item = self.store.get(self.namespace, scope)
            except (ValueError, TypeError, RecursionError) as err:  # undecodable stored value
                raise MemoryRecordError(
                    f"store {self.namespace}/{scope}: unreadable entry ({err})"
                ) from err
            if item is not None:
                return self._from_json(item.value, where=f"store {self.namespace}/{scope}")
        return _Scope(self.engine.handle.new_state())

    def _commit(self, scope: str, record: _Scope, **changes: Any) -> None:
        """Store the scope with ``changes``, then apply them here: a store write that fails
        leaves the scope unchanged in both places (never a process ahead of its store)."""
        if "state" in changes:
            changes.setdefault("origin", None)
        if self.store is not None:
            updated = dataclasses.replace(record, **changes)
            self.store.put(self.namespace, scope, self._to_json(updated))
        for name, value in changes.items():
            setattr(record, name, value)

    # --- writing and reading ------------------------------------------------------------
    def write(
        self,
        messages: Sequence[BaseMessage | Mapping[str, Any]],
        *,
        scope: str | None = None,
        config: RunnableConfig | None = None,
        skip_written: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        callbacks: Callbacks = None,
    ) -> list[WrittenSegment]:
        """Write messages into the scope's memory, one segment per message (system skipped),
        before returning.

        Args:
            skip_written: write only the messages after the last one this scope already holds
                (what a chat model handed the whole history needs).
            progress: called after each forward with (tokens written, tokens to write); by
                default a long write shows a tqdm bar when stderr is a terminal.
            cancel: set it (from another thread) to stop the write: `WriteCancelled` is
                raised and the scope keeps exactly what it held before the call.
            callbacks: LangChain callbacks that get the progress as custom events
                (``on_custom_event("deltamem_write_progress", {...})``).
        """
        name = self._name(config, scope)
        progress = progress or callback_progress(callbacks, name)
        converted = self._convert(messages)
        with self._scope(name, change=True) as record:
            converted = self._new_messages(record, converted, skip_written)
            if not converted:
                return []
            state = record.state.clone()  # write a copy: a failure leaves the scope untouched
            written = self._write_into(state, converted, progress, cancel)
            keys = (record.keys + [message_key(m) for m in converted])[-_KEY_HISTORY:]
            self._commit(name, record, state=state, log=[*record.log, converted], keys=keys)
            return written

    def write_later(
        self,
        messages: Sequence[BaseMessage | Mapping[str, Any]],
        *,
        scope: str | None = None,
        config: RunnableConfig | None = None,
        skip_written: bool = False,
    ) -> list[dict[str, str]]:
        """Queue a write: the messages are checked, logged as the scope's pending write (in the
        store too, if there is one) and returned at once; the background writer applies them.
        The scope's next operation (read, write, export, …) waits for them.

        Returns:
            The messages queued (after ``skip_written``), as memory segments.
        """
        name = self._name(config, scope)
        converted = self._convert(messages)
        with self._scope(name, change=True, settle=False) as record:
            converted = self._new_messages(record, converted, skip_written)
            if not converted:
                return []
            warn_long_messages(self.engine.tokenizer, converted, self.max_segment_tokens)
            keys = (record.keys + [message_key(m) for m in converted])[-_KEY_HISTORY:]
            self._commit(name, record, pending=[*record.pending, converted], keys=keys)
        self._start_writer()
        self._writes.put(name)
        return converted

    def flush(self, *, scope: str | None = None, config: RunnableConfig | None = None) -> None:
        """Apply the pending writes now (of one scope, or of all when neither ``scope`` nor a
        ``thread_id`` is given), waiting for those the background writer is applying."""
        explicit = scope is not None or ((config or {}).get("configurable") or {}).get("thread_id")
        names = [self._name(config, scope)] if explicit else list(self._scopes)
        for name in names:
            record = self._scopes.get(name)
            if record is not None:
                with self._scope(name):
                    pass  # entering settles

    def pending_writes(
        self, *, scope: str | None = None, config: RunnableConfig | None = None
    ) -> int:
        """Write calls queued for the scope and not yet applied."""
        record = self._scopes.get(self._name(config, scope))
        return 0 if record is None else len(record.pending)

    def _convert(self, messages: Sequence[BaseMessage | Mapping[str, Any]]) -> list[dict[str, str]]:
        converted = [message_to_dict(m) for m in messages]
        converted = [m for m in converted if m["role"] != "system"]
        self.check_message_sizes(converted)
        return converted

    def _new_messages(
        self, record: _Scope, converted: list[dict[str, str]], skip_written: bool
    ) -> list[dict[str, str]]:
        if skip_written:
            converted = _unwritten(converted, record.keys)
        cap = self.max_segments_per_write
        if cap is not None and len(converted) > cap:
            raise MemoryLimitError(
                f"{len(converted)} messages in one write exceed max_segments_per_write={cap}"
            )
        return converted

    # --- the background writer ----------------------------------------------------------
    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(
                    target=_writer_loop,
                    args=(weakref.ref(self),),
                    name="deltamem-writer",
                    daemon=True,
                )
                self._writer.start()

    def _settle_some(self, names: list[str]) -> None:
        """Apply the pending writes of the named scopes that are free now, batched. A scope
        held by another call is skipped: that call settles it itself."""
        held: list[tuple[str, _Scope]] = []
        try:
            for name in dict.fromkeys(names):
                record = self._scopes.get(name)
                if record is not None and record.lock.acquire(blocking=False):
                    if record.pending:
                        held.append((name, record))
                    else:
                        record.lock.release()
            if held:
                with ExitStack() as store_held:  # other processes' writes land first
                    if self.store is not None:  # in one order in every process: no deadlock
                        for name, record in sorted(held, key=lambda item: item[0]):
                            store_held.enter_context(self._store_lock.hold(self.namespace, name))
                            self._refresh(name, record)
                    ready = [(name, record) for name, record in held if record.pending]
                    if ready:
                        self._settle(ready)
        finally:
            for _, record in held:
                record.lock.release()

    def _settle(self, items: list[tuple[str, _Scope]], progress: Progress | None = None) -> None:
        """Apply the pending write calls of held scopes, in order: the ``k``-th pending call of
        every scope in one batched forward. A failure leaves every scope as it was."""
        engine = self.engine
        states = [record.state.clone() for _, record in items]
        calls = [list(record.pending) for _, record in items]
        if len(items) == 1:  # one scope: its calls one by one, with a progress bar if long
            for call in calls[0]:
                self._write_into(states[0], call, progress, warn=False)
        else:
            for k in range(max(len(c) for c in calls)):
                rows = [i for i, c in enumerate(calls) if k < len(c)]
                write_messages_batch(
                    engine.handle,
                    engine.tokenizer,
                    [states[i] for i in rows],
                    [calls[i][k] for i in rows],
                    system_prompt=self.system_prompt,
                    router=self.router,
                    max_segment_tokens=self.max_segment_tokens,
                    max_forward_tokens=engine.context_length,
                    warn=False,
                    lock=engine.compute_lock,
                )
        for (name, record), state, done in zip(items, states, calls, strict=True):
            origin = (record.state.to_bytes(), done)
            self._commit(
                name, record, state=state, log=[*record.log, *done], pending=[], origin=origin
            )

    def check_message_sizes(self, messages: Sequence[Mapping[str, str]]) -> None:
        """Raise `MemoryLimitError` if a message is longer than ``max_message_chars``
        (the chat model calls this before generating, so nothing is spent on a refused turn)."""
        cap = self.max_message_chars
        if cap is None:
            return
        for i, message in enumerate(messages):
            if len(message["content"]) > cap:
                raise MemoryLimitError(
                    f"message {i} has {len(message['content']):,} characters, more than "
                    f"max_message_chars={cap:,}; nothing was written"
                )

    def _write_into(
        self,
        state: MemoryState,
        messages: list[dict[str, str]],
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        warn: bool = True,
    ) -> list[WrittenSegment]:
        engine = self.engine
        bar = None
        if progress is None and sys.stderr.isatty():
            chars = sum(len(m["content"]) for m in messages)
            if chars >= _PROGRESS_FROM * 3:  # ~3 characters a token: worth a bar
                from tqdm import tqdm

                bar = tqdm(desc="writing to memory", unit="tok", leave=False)

                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

        try:
            return write_messages(
                engine.handle,
                engine.tokenizer,
                state,
                messages,
                system_prompt=self.system_prompt,
                router=self.router,
                max_segment_tokens=self.max_segment_tokens,
                max_forward_tokens=engine.context_length,
                progress=progress,
                cancel=cancel,
                warn=warn,
                lock=engine.compute_lock,  # one serving forward at a time (DeltaMemEngine)
            )
        finally:
            if bar is not None:
                bar.close()

    @contextmanager
    def reading(
        self, *, scope: str | None = None, config: RunnableConfig | None = None
    ) -> Iterator[MemoryRun]:
        """Forward passes inside read the scope's memory with writes off (state unchanged)."""
        name = self._name(config, scope)
        with self._scope(name) as record:
            with self.engine.handle.memory(record.state) as run:
                yield run
            record.last_ratio = run.correction_ratio() or record.last_ratio

    @contextmanager
    def held(
        self,
        *,
        scope: str | None = None,
        config: RunnableConfig | None = None,
        progress: Progress | None = None,
    ) -> Iterator[MemoryState]:
        """Hold the scope (other calls on it wait) and give its live state, for a caller that
        runs its own read, e.g. a generation loop entering ``handle.memory(state)`` itself.
        The caller must not write into it; `record_read` keeps the read's correction ratios.
        ``progress`` reports the scope's pending writes applied first, if any."""
        with self._scope(self._name(config, scope), progress=progress) as record:
            yield record.state

    def record_read(
        self,
        run: MemoryRun | dict[int, dict[str, float]],
        *,
        scope: str | None = None,
        config: RunnableConfig | None = None,
    ) -> None:
        """Keep the correction ratios of a read (a run, or its ratios; shown by `stats`)."""
        ratio = run if isinstance(run, dict) else run.correction_ratio()
        if ratio:
            with self._scope(self._name(config, scope)) as record:
                record.last_ratio = ratio

    def state(
        self, *, scope: str | None = None, config: RunnableConfig | None = None
    ) -> MemoryState:
        """A copy of the scope's current state."""
        with self._scope(self._name(config, scope)) as record:
            return record.state.clone()

    # --- management ---------------------------------------------------------------------
    def scopes(self) -> list[str]:
        """Scopes known in this process (and in the store, if any)."""
        names = set(self._scopes)
        if self.store is not None:
            names |= {item.key for item in self.store.search(self.namespace, limit=10_000)}
        return sorted(names)

    def reset(self, *, scope: str | None = None, config: RunnableConfig | None = None) -> None:
        """Empty the scope's memory and log (pending writes are dropped, not applied)."""
        name = self._name(config, scope)
        with self._scope(name, change=True, settle=False) as record:
            state = self.engine.handle.new_state()
            self._commit(name, record, state=state, log=[], keys=[], last_ratio={}, pending=[])

    def fork(self, source: str, target: str) -> None:
        """Copy scope ``source`` (state and log) to ``target``, replacing what it held."""
        data = self.export(scope=source)
        self.import_(data, scope=target)

    def export(self, *, scope: str | None = None, config: RunnableConfig | None = None) -> bytes:
        """The scope as bytes (UTF-8 JSON with the state as base64 safetensors and a checksum)."""
        with self._scope(self._name(config, scope)) as record:
            return json.dumps(self._to_json(record), sort_keys=True).encode()

    def import_(
        self, data: bytes, *, scope: str | None = None, config: RunnableConfig | None = None
    ) -> None:
        """Replace the scope with exported bytes; refused (scope untouched) if they are corrupt
        or come from another backbone or adapter."""
        try:
            body = json.loads(bytes(data).decode())
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, RecursionError) as err:
            raise MemoryRecordError(f"memory export is not valid JSON: {err}") from err
        incoming = self._from_json(body, where="import")
        name = self._name(config, scope)
        # replaced, pending writes too
        with self._scope(name, change=True, settle=False) as record:
            self._commit(
                name,
                record,
                state=incoming.state,
                log=incoming.log,
                keys=incoming.keys,
                last_ratio={},
                pending=incoming.pending,
            )

    def snapshot(
        self,
        *,
        scope: str | None = None,
        config: RunnableConfig | None = None,
        keys: int = SNAPSHOT_KEYS,
    ) -> dict[str, Any]:
        """The scope's state as a fixed-size record for a graph checkpoint: the state bytes and
        the keys of the last ``keys`` messages written (for new-message detection), without
        the segment log, so its size does not grow with the conversation.

        It does not wait for the scope's pending writes: their messages go into the snapshot
        (``pending``) with the state before them, and `restore` applies them. The snapshot is
        the same whether or not the background writer has applied them yet."""
        with self._scope(self._name(config, scope), settle=False) as record:
            state, pending = _unsettled(record)
            kept = list(record.keys[-keys:]) if keys > 0 else []
            snapshot = {
                "format": SNAPSHOT_FORMAT,
                "version": SCOPE_VERSION,
                "state": state,
                "keys": kept,
                CHECKSUM: _checksum(SNAPSHOT_FORMAT, state, None, kept, pending),
            }
            if pending:
                snapshot[_PENDING] = pending
            return snapshot

    def restore(
        self,
        snapshot: Mapping[str, Any],
        *,
        scope: str | None = None,
        config: RunnableConfig | None = None,
    ) -> bool:
        """Make the scope hold a `snapshot` (e.g. from a checkpoint). Refused with
        `MemoryRecordError`, scope untouched, if it is corrupt or from another backbone or
        adapter. A snapshot carries no segment log: after a restore that changed the state,
        `forget` covers only segments written since. Returns whether anything changed."""
        where = "graph memory snapshot"
        _SNAPSHOT.check(snapshot, MemoryRecordError, where=where)
        raw, keys = snapshot.get("state"), snapshot.get("keys")
        if not isinstance(raw, bytes | bytearray):
            raise MemoryRecordError(f"{where}: 'state' must be bytes, got {type(raw).__name__}")
        if not _valid_keys(keys):
            raise MemoryRecordError(
                f"{where}: 'keys' must be a list of at most {_KEY_HISTORY} message keys"
            )
        pending = snapshot.get(_PENDING, [])
        if not _valid_log(pending):
            raise MemoryRecordError(f"{where}: 'pending' is not a list of write calls")
        if checksum_mismatch(
            snapshot, lambda: _checksum(SNAPSHOT_FORMAT, bytes(raw), None, keys, pending)
        ):
            raise MemoryRecordError(f"{where}: checksum mismatch (altered or damaged)")
        name = self._name(config, scope)
        with self._scope(name, change=True, settle=False) as record:
            held_keys = record.keys[-len(keys) :] if keys else []
            if held_keys == keys and _unsettled(record) == (bytes(raw), pending):
                return False  # already there (written, or still pending): keep the log
            try:
                state = self.engine.handle.load_state(bytes(raw))
            except MemoryStateError as err:
                raise MemoryRecordError(f"{where}: {err}") from err
            self._commit(
                name,
                record,
                state=state,
                log=[],
                keys=list(keys),
                last_ratio={},
                pending=[list(call) for call in pending],
            )
        if pending:  # applied by the background writer, or by the scope's next operation
            self._start_writer()
            self._writes.put(name)
        return True

    def forget(
        self, index: int, *, scope: str | None = None, config: RunnableConfig | None = None
    ) -> dict[str, str]:
        """Forget the ``index``-th written segment (0 = oldest; negative counts from the end) by
        replaying every other segment, in the original write calls, into an empty state.

        Returns the forgotten segment.
        """
        name = self._name(config, scope)
        with self._scope(name, change=True) as record:
            flat = [(g, i) for g, group in enumerate(record.log) for i in range(len(group))]
            if not -len(flat) <= index < len(flat):
                raise IndexError(f"scope {name!r} holds {len(flat)} segments; no segment {index}")
            g, i = flat[index]
            forgotten = record.log[g][i]
            log = [
                [m for j, m in enumerate(group) if (k, j) != (g, i)]
                for k, group in enumerate(record.log)
            ]
            log = [group for group in log if group]
            state = self.engine.handle.new_state()
            for group in log:
                self._write_into(state, group)
            keys = [message_key(m) for group in log for m in group][-_KEY_HISTORY:]
            self._commit(name, record, state=state, log=log, keys=keys)
            return forgotten

    def stats(
        self, *, scope: str | None = None, config: RunnableConfig | None = None
    ) -> dict[str, Any]:
        """Writes per state, per-layer state norms, and the last read's correction ratios."""
        name = self._name(config, scope)
        with self._scope(name) as record:
            state = record.state
            return {
                "scope": name,
                "segments": sum(len(g) for g in record.log),
                "writes_per_state": state.write_counts[0].tolist(),
                "state_bytes": state.nbytes_per_conversation,
                "layers": [
                    {"layer": row["layer"], "norm": row["norm"][0]} for row in state.stats()
                ],
                "correction_ratio": record.last_ratio,
            }

    # --- async forms --------------------------------------------------------------------
    # A write is a forward pass: these run the sync method in a worker thread, so the event
    # loop never blocks and an async store (AsyncPostgresStore) is reached from off its loop.
    async def awrite(
        self, messages: Sequence[BaseMessage | Mapping[str, Any]], **kwargs: Any
    ) -> list[WrittenSegment]:
        """`write` off the event loop."""
        return await asyncio.to_thread(self.write, messages, **kwargs)

    async def astate(self, **kwargs: Any) -> MemoryState:
        """`state` off the event loop."""
        return await asyncio.to_thread(self.state, **kwargs)

    async def areset(self, **kwargs: Any) -> None:
        """`reset` off the event loop."""
        await asyncio.to_thread(self.reset, **kwargs)

    async def aforget(self, index: int, **kwargs: Any) -> dict[str, str]:
        """`forget` off the event loop."""
        return await asyncio.to_thread(self.forget, index, **kwargs)

    async def aexport(self, **kwargs: Any) -> bytes:
        """`export` off the event loop."""
        return await asyncio.to_thread(self.export, **kwargs)

    async def aimport_(self, data: bytes, **kwargs: Any) -> None:
        """`import_` off the event loop."""
        await asyncio.to_thread(self.import_, data, **kwargs)

    async def astats(self, **kwargs: Any) -> dict[str, Any]:
        """`stats` off the event loop."""
        return await asyncio.to_thread(self.stats, **kwargs)

    async def aflush(self, **kwargs: Any) -> None:
        """`flush` off the event loop."""
        await asyncio.to_thread(self.flush, **kwargs)

    async def ascopes(self) -> list[str]:
        """`scopes` off the event loop."""
        return await asyncio.to_thread(self.scopes)

    # --- JSON records -------------------------------------------------------------------
    def _to_json(self, record: _Scope) -> dict[str, Any]:
        state = record.state.to_bytes()
        body = {
            "format": SCOPE_FORMAT,
            "version": SCOPE_VERSION,
            "state": base64.b64encode(state).decode("ascii"),
            "log": record.log,
            "keys": record.keys,
            CHECKSUM: _checksum(SCOPE_FORMAT, state, record.log, record.keys, record.pending),
        }
        if record.pending:
            body[_PENDING] = record.pending
        return body

    def _from_json(self, body: Any, *, where: str) -> _Scope:
        _RECORD.check(body, MemoryRecordError, where=where)
        try:
            raw = base64.b64decode(body["state"], validate=True)
        except (TypeError, ValueError) as err:
            raise MemoryRecordError(f"{where}: corrupt memory record (state: {err})") from err
        log, keys, pending = body["log"], body["keys"], body.get(_PENDING, [])
        if not _valid_log(log):
            raise MemoryRecordError(f"{where}: corrupt memory record (segment log)")
        if not _valid_log(pending):
            raise MemoryRecordError(f"{where}: corrupt memory record (pending writes)")
        if not _valid_keys(keys):
            raise MemoryRecordError(f"{where}: corrupt memory record (message keys)")
        try:
            state = self.engine.handle.load_state(raw)
        except MemoryStateError as err:
            raise MemoryRecordError(f"{where}: {err}") from err
        if checksum_mismatch(body, lambda: _checksum(SCOPE_FORMAT, raw, log, keys, pending)):
            raise MemoryRecordError(
                f"{where}: corrupt memory record (checksum mismatch: altered or damaged)"
            )
        return _Scope(state, log, keys, pending=pending)


def callback_progress(callbacks: Callbacks, scope: str) -> Progress | None:
    """A write's progress as LangChain custom events ``deltamem_write_progress`` with
    ``{"scope", "tokens_written", "tokens_total"}`` (None without callbacks)."""
    if not callbacks:
        return None
    manager = CallbackManager.configure(inheritable_callbacks=callbacks)

    def report(done: int, total: int) -> None:
        data = {"scope": scope, "tokens_written": done, "tokens_total": total}
        manager.on_custom_event(WRITE_PROGRESS_EVENT, data)

    return report


def _unsettled(record: _Scope) -> tuple[bytes, list[list[dict[str, str]]]]:
    """The scope as (state before its latest pending writes, those writes): the same whether
    the background writer has applied them yet or not."""
    if record.pending:
        return record.state.to_bytes(), record.pending
    if record.origin is not None:
        return record.origin
    return record.state.to_bytes(), []


def _valid_log(log: Any) -> bool:
    fields = {"role", "content", "source"}
    return isinstance(log, list) and all(
        isinstance(group, list)
        and all(
            isinstance(m, dict)
            and set(m) == fields
            and all(isinstance(v, str) for v in m.values())
            and m["role"] in _LOG_ROLES
            for m in group
        )
        for group in log
    )


def _valid_keys(keys: Any) -> bool:
    return (
        isinstance(keys, list)
        and len(keys) <= _KEY_HISTORY
        and all(isinstance(k, str) and _KEY_PATTERN.fullmatch(k) for k in keys)
    )


# A scope's record in a store or an export, and its fixed-size snapshot in a graph's state
# (``checksum`` optional in both: older ones have none; ``pending`` only while writes wait).
_RECORD = RecordFormat(
    format=SCOPE_FORMAT,
    version=SCOPE_VERSION,
    fields=frozenset({"format", "version", "state", "log", "keys"}),
    optional=frozenset({CHECKSUM, _PENDING}),
    wrong_format="{where}: not a δ-mem memory record",
    wrong_version="{where}: unsupported record version {value!r}",
    unknown="{where}: corrupt memory record (unknown fields {value})",
    missing="{where}: corrupt memory record (missing fields {value})",
)
_SNAPSHOT = RecordFormat(
    format=SNAPSHOT_FORMAT,
    version=SCOPE_VERSION,
    fields=frozenset({"format", "version", "state", "keys"}),
    optional=frozenset({CHECKSUM, _PENDING}),
    wrong_format="{where}: not a δ-mem memory snapshot",
    wrong_version="{where}: unsupported snapshot version {value!r}",
    unknown="{where}: unknown field(s) {value!r:.200}",
)


def _checksum(kind: str, state: bytes, log: Any, keys: list[str], pending: Any = None) -> str:
    """sha256 over a record's state bytes, segment log, message keys and pending writes (if
    any): a damaged or edited record is refused instead of being read as another memory."""
    parts = [kind, log, keys, pending] if pending else [kind, log, keys]
    return checksum_of(hashlib.sha256(state).digest(), parts)


def _unwritten(messages: list[dict[str, str]], written_keys: list[str]) -> list[dict[str, str]]:
    """The messages after the longest prefix of ``messages`` whose tail matches the written log.

    A chat model is usually handed the whole history (or its last window) again each turn; the
    new messages are those after the last point where the history lines up with what was written.
    """
    keys = [message_key(m) for m in messages]
    for end in range(len(keys), 0, -1):
        span = min(end, len(written_keys))
        if span and keys[end - span : end] == written_keys[-span:]:
            return messages[end:]
    return messages


def _writer_loop(ref: weakref.ref[DeltaMemory]) -> None:
    """The background writer of one `DeltaMemory`: takes queued scope names, waits up to
    ``write_wait`` for more (up to ``write_batch_size``), applies them batched. It holds the
    memory weakly, so a memory nobody uses any more can be collected."""
    while True:
        memory = ref()
        if memory is None:
            return
        queued, limit, wait = memory._writes, memory.write_batch_size, memory.write_wait
        del memory
        try:
            names = [queued.get(timeout=60.0)]
        except queue.Empty:
            continue
        deadline = time.monotonic() + wait
        while len(set(names)) < limit:
            left = deadline - time.monotonic()
            try:
                names.append(queued.get(timeout=left) if left > 0 else queued.get_nowait())
            except queue.Empty:
                break
        memory = ref()
        if memory is None:
            return
        try:
            memory._settle_some(names)
        except Exception:  # kept pending: the scope's next operation retries and raises
            _LOGGER.exception("δ-mem background write failed; it stays pending")
        del memory


_LIVE: weakref.WeakSet[DeltaMemory] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Apply every pending write before the interpreter exits."""
    for memory in list(_LIVE):
        try:
            memory.flush()
        except Exception:
            _LOGGER.exception("δ-mem could not apply pending writes at exit")
