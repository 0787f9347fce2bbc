"""δ-mem in LangGraph graphs: memory kept in the graph state, checkpointed without pickle.

How one agent step works (hand-built `StateGraph` with `agent_node`, or `create_agent` with
`middleware.DeltaMemMiddleware`; both go through `GraphMemory`):

1. The scope is resolved: ``scope`` if given, else ``configurable[user_key]`` (per-user memory
   kept in a LangGraph `BaseStore`, shared by all of that user's threads), else the run's
   ``thread_id``. A run with neither is refused: without a thread there is nothing to attach
   memory to (pass ``scope=`` for an explicitly shared or ephemeral memory).
2. Thread memory: the snapshot in the graph state's ``deltamem`` field is restored into the
   model's `DeltaMemory` (a no-op when it already holds it). That field is the source of
   truth, so a restarted process, or a run resumed from an older checkpoint, reads exactly the
   memory of that checkpoint.
3. The model replies (prompt = system message + window; memory read with writes off), then
   writes the step's new messages: one SSW segment each, the AI message (text and tool calls)
   to the dialogue state, each `ToolMessage` to its tool's MSW state (`SourceRouter`; with an
   H = 1 adapter everything shares the single state).
4. The new snapshot goes back into ``deltamem`` (a dict of bytes and strings: the standard
   checkpointers store it with msgpack, no pickle). The step does not wait for its write: the
   snapshot holds the state before it plus the step's messages as ``pending``, which
   `DeltaMemory.restore` (or the memory's background writer) applies, so its size is the fixed
   state plus one step's messages. With
   ``keep_messages`` the messages older than the last ``keep_messages`` are removed from the
   graph state with `RemoveMessage` (they live on in memory), so checkpoints stop growing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import MessagesState

from .chat_model import ChatDeltaMem
from .memory import SNAPSHOT_KEYS, DeltaMemory, MissingScopeError

GRAPH_FIELD = "deltamem"
__all__ = ["GRAPH_FIELD", "DeltaMemState", "GraphMemory", "MissingScopeError", "agent_node"]


def keep_latest(current: Any, update: Any) -> Any:
    """Reducer of the ``deltamem`` field: the newest snapshot wins; ``None`` keeps the old."""
    return current if update is None else update


class DeltaMemState(MessagesState, total=False):
    """`MessagesState` plus the thread's δ-mem snapshot (for hand-built graphs)."""

    deltamem: Annotated[dict[str, Any] | None, keep_latest]


class GraphMemory:
    """The δ-mem bookkeeping of a graph around one `ChatDeltaMem`.

    Args:
        model: the chat model whose memory is kept (its `DeltaMemory`).
        keep_messages: messages (besides system messages) to keep in the graph state; older
            ones are removed once written. None keeps everything (checkpoints then grow).
        scope: one fixed memory scope for every run (shared or explicitly ephemeral memory).
        user_key: keep memory per user instead of per thread: the scope is
            ``configurable[user_key]`` and the memory persists in the model's `DeltaMemory`
            store (which must be set), shared by all that user's threads.
    """

    def __init__(
        self,
        model: ChatDeltaMem,
        *,
        keep_messages: int | None = None,
        scope: str | None = None,
        user_key: str | None = None,
    ) -> None:
        if not isinstance(model, ChatDeltaMem):
            raise TypeError(f"GraphMemory needs a ChatDeltaMem, got {type(model).__name__}")
        if keep_messages is not None and keep_messages < 1:
            raise ValueError(f"keep_messages must be >= 1 or None, got {keep_messages}")
        if scope is not None and user_key is not None:
            raise ValueError("give either scope or user_key, not both")
        if user_key is not None and model.get_memory().store is None:
            raise ValueError(
                "per-user memory (user_key) persists through a LangGraph store: give the model "
                "a DeltaMemory(store=...)"
            )
        self.model = model
        self.keep_messages = keep_messages
        self.scope = scope
        self.user_key = user_key

    @property
    def memory(self) -> DeltaMemory:
        return self.model.get_memory()

    @property
    def in_graph_state(self) -> bool:
        """Whether the memory lives in the graph state (per thread) rather than a store."""
        return self.user_key is None

    def scope_for(self, config: RunnableConfig | None) -> str:
        """The memory scope of a run (see the module docstring, step 1)."""
        if self.scope is not None:
            return self.scope
        configurable = (config or {}).get("configurable") or {}
        if self.user_key is not None:
            user = configurable.get(self.user_key)
            if user is None or user == "":
                raise MissingScopeError(
                    f"per-user δ-mem memory needs configurable[{self.user_key!r}] in the run config"
                )
            return f"user:{user}"
        thread = configurable.get("thread_id")
        if thread is None or thread == "":
            raise MissingScopeError(
                "δ-mem keeps memory per thread: run the graph with config={'configurable': "
                "{'thread_id': ...}} (or build the memory with scope=... for one shared or "
                "explicitly ephemeral memory)"
            )
        return str(thread)  # the scope ChatDeltaMem itself uses for this thread

    def load(self, state: dict[str, Any], config: RunnableConfig | None) -> str:
        """Resolve the scope and restore the graph state's snapshot into it; returns the scope.

        Raises `MemoryRecordError` (scope untouched) for a snapshot that is corrupt or was
        written by another backbone or adapter."""
        scope = self.scope_for(config)
        snapshot = state.get(GRAPH_FIELD) if self.in_graph_state else None
        if snapshot is not None:
            self.memory.restore(snapshot, scope=scope)
        elif self.in_graph_state and self.scope is None:
            self.memory.reset(scope=scope)  # a new thread starts empty, whatever ran before
        return scope

    def save(self, scope: str, messages: Sequence[BaseMessage]) -> dict[str, Any]:
        """The state update after a step: the new snapshot and the trimmed messages."""
        update: dict[str, Any] = {}
        if self.in_graph_state:
            # keys of the kept messages suffice to find the new ones: a fixed-size record
            keys = self.keep_messages or SNAPSHOT_KEYS
            update[GRAPH_FIELD] = self.memory.snapshot(scope=scope, keys=keys)
        removals = self.trim(messages)
        if removals:
            update["messages"] = removals
        return update

    def trim(self, messages: Sequence[BaseMessage]) -> list[RemoveMessage]:
        """`RemoveMessage`s for the messages before the last ``keep_messages`` (system messages
        stay; the kept part never starts with a tool result cut from its call)."""
        if self.keep_messages is None:
            return []
        rest = [m for m in messages if m.type != "system"]
        start = max(0, len(rest) - self.keep_messages)
        while start > 0 and isinstance(rest[start], ToolMessage):
            start -= 1
        return [RemoveMessage(id=m.id) for m in rest[:start] if m.id is not None]


def agent_node(
    memory: GraphMemory,
    model: Runnable[LanguageModelInput, BaseMessage] | None = None,
) -> Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]:
    """A `StateGraph` node (state: `DeltaMemState`) that runs one δ-mem agent step.

    ``model`` is what to call, e.g. ``memory.model.bind_tools(tools)``; default: the bare
    chat model. Pair it with a `ToolNode` and ``tools_condition`` for a tool-using agent.
    """
    runnable = model if model is not None else memory.model

    def deltamem_agent(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        scope = memory.load(state, config)
        messages = list(state["messages"])
        reply = runnable.invoke(messages, config, memory_scope=scope)
        if not isinstance(reply, AIMessage):
            raise TypeError(f"the agent model returned {type(reply).__name__}, not AIMessage")
        update = memory.save(scope, [*messages, reply])
        update["messages"] = [reply, *update.get("messages", [])]
        return update

    return deltamem_agent
