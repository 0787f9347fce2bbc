"""`DeltaMemMiddleware`: δ-mem for agents built with ``langchain.agents.create_agent``.

::

    model = ChatDeltaMem(adapter="smollm2-msw")
    agent = create_agent(
        model,
        tools=[calculator, lookup_note],
        middleware=[DeltaMemMiddleware(model, keep_messages=8)],
        checkpointer=InMemorySaver(),
    )
    agent.invoke({"messages": [...]}, {"configurable": {"thread_id": "alice"}})

Around each model call it restores the thread's memory from the agent state, hands the model
its scope, and afterwards stores the new snapshot in the state's ``deltamem`` field and trims
old messages: the same steps as `graph.agent_node` (see `graph` for the whole procedure).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langgraph.config import get_config
from langgraph.runtime import Runtime
from typing_extensions import NotRequired

from .chat_model import ChatDeltaMem
from .graph import GraphMemory, keep_latest


class DeltaMemAgentState(AgentState):
    """The agent state plus the thread's δ-mem snapshot."""

    deltamem: NotRequired[Annotated[dict[str, Any] | None, keep_latest]]


class DeltaMemMiddleware(AgentMiddleware[DeltaMemAgentState]):
    """Keep an agent's long-term memory in δ-mem (arguments as `graph.GraphMemory`).

    The agent's model must be the same `ChatDeltaMem` (tools may be bound to it by the agent).
    """

    state_schema = DeltaMemAgentState

    def __init__(
        self,
        model: ChatDeltaMem,
        *,
        keep_messages: int | None = None,
        scope: str | None = None,
        user_key: str | None = None,
    ) -> None:
        super().__init__()
        self.graph_memory = GraphMemory(
            model, keep_messages=keep_messages, scope=scope, user_key=user_key
        )

    def _prepare(self, request: ModelRequest) -> ModelRequest:
        if request.model is not self.graph_memory.model:
            raise TypeError(
                "DeltaMemMiddleware was built for another model than the agent's: pass the "
                "agent's ChatDeltaMem to both"
            )
        scope = self.graph_memory.load(dict(request.state), get_config())
        return request.override(model_settings={**request.model_settings, "memory_scope": scope})

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self._prepare(request))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        return await handler(self._prepare(request))

    def after_model(self, state: DeltaMemAgentState, runtime: Runtime) -> dict[str, Any] | None:
        memory = self.graph_memory
        scope = memory.scope_for(get_config())
        return memory.save(scope, state["messages"]) or None
