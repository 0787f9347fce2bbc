"""δ-mem in LangGraph on the real embedded SmolLM2: `create_agent` with `DeltaMemMiddleware`,
a hand-built `StateGraph` with `ToolNode`, checkpointers, stores and the examples.

Every test builds its own `DeltaMemory` on the shared engines, so nothing written by one test
reaches another. A tool-policy wrapper forces a tool call on the first step of each turn (the
135M model rarely decides to call one) and offers none once a result is in, so each turn is a
real multi-step run: call → `ToolNode` → answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import runpy
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.store.memory import InMemoryStore

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import DeltaMemEngine, get_engine
from langchain_deltamem.graph import (
    DeltaMemState,
    GraphMemory,
    MissingScopeError,
    agent_node,
)
from langchain_deltamem.memory import DeltaMemory, MemoryRecordError
from langchain_deltamem.middleware import DeltaMemMiddleware
from langchain_deltamem.writing import SourceRouter

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TOOL_STATES = {"calculator": 1, "lookup_note": 2}  # state 3 belongs to no tool


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return "391" if expression else "error: empty expression"


@tool
def lookup_note(topic: str) -> str:
    """Look up the user's note on a topic."""
    return f"note on {topic}: the wifi password is heron-42"


TOOLS = [calculator, lookup_note]


@pytest.fixture(scope="module")
def msw_engine() -> DeltaMemEngine:
    return get_engine(adapter="fresh-msw")


def msw_model(engine: DeltaMemEngine, **params: Any) -> ChatDeltaMem:
    router = SourceRouter(engine.handle.config.num_states, TOOL_STATES)
    memory = params.pop("memory", None) or DeltaMemory(engine, router=router)
    return ChatDeltaMem(adapter="fresh-msw", max_tokens=6, memory=memory, **params)


@wrap_model_call
def tool_first(
    request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
) -> ModelResponse:
    after_tool = bool(request.messages) and isinstance(request.messages[-1], ToolMessage)
    choice = "none" if after_tool else "calculator"
    return handler(request.override(tool_choice=choice))


def build_agent(model: ChatDeltaMem, checkpointer: Any = None, **memory_params: Any) -> Any:
    return create_agent(
        model,
        tools=TOOLS,
        middleware=[tool_first, DeltaMemMiddleware(model, **memory_params)],
        checkpointer=checkpointer if checkpointer is not None else InMemorySaver(),
    )


def build_graph(model: ChatDeltaMem, checkpointer: Any = None, **memory_params: Any) -> Any:
    """Hand-built agent: δ-mem agent node + ToolNode + tools_condition."""
    memory = GraphMemory(model, **memory_params)
    forced = agent_node(memory, model.bind_tools(TOOLS, tool_choice="lookup_note"))
    answer = agent_node(memory, model.bind_tools(TOOLS, tool_choice="none"))

    def agent(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        last = state["messages"][-1]
        return (answer if isinstance(last, ToolMessage) else forced)(state, config)

    graph = StateGraph(DeltaMemState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(TOOLS))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer)


def thread(name: str, **extra: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": name, **extra}}


def settled(snapshot: dict[str, Any], memory: DeltaMemory) -> Any:
    """The memory a snapshot stands for: its state with its pending writes applied."""
    memory.restore(snapshot, scope="settled-check")
    return memory.state(scope="settled-check")


def layer_states(snapshot: dict[str, Any], memory: DeltaMemory) -> list[torch.Tensor]:
    return settled(snapshot, memory).layers


def changed_states(before: list[torch.Tensor], after: list[torch.Tensor]) -> set[int]:
    """Indices of the MSW states that differ in any layer."""
    return {
        h
        for old, new in zip(before, after, strict=True)
        for h in range(old.shape[1])
        if not torch.equal(old[:, h], new[:, h])
    }


# --- create_agent + middleware -----------------------------------------------------------


def test_agent_steps_go_to_dialogue_and_tool_results_to_their_own_state(
    msw_engine: DeltaMemEngine,
) -> None:
    model = msw_model(msw_engine)
    agent = build_agent(model, keep_messages=4)
    config = thread("tools")
    first = agent.invoke({"messages": [HumanMessage("What is 17 * 23?")]}, config)
    kinds = [type(m).__name__ for m in first["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"], kinds
    assert first["messages"][1].tool_calls[0]["name"] == "calculator"
    snapshot = first["deltamem"]
    assert isinstance(snapshot["state"], bytes)
    # the graph state holds exactly the memory the model's scope holds
    memory = model.get_memory()
    assert settled(snapshot, memory).to_bytes() == memory.state(scope="tools").to_bytes()
    counts = model.get_memory().stats(scope="tools")["writes_per_state"]
    assert counts[TOOL_STATES["calculator"]] == 1  # the one tool result
    assert counts[TOOL_STATES["lookup_note"]] == 0 and counts[3] == 0
    assert counts[0] == 3  # the question, the call step and the answer

    second = agent.invoke({"messages": [HumanMessage("And 2 + 2?")]}, config)
    after = layer_states(second["deltamem"], memory)
    changed = changed_states(layer_states(snapshot, memory), after)
    assert changed == {0, TOOL_STATES["calculator"]}  # never lookup_note's or the spare state
    # trimmed to the last 4 messages (not starting on a tool result); memory kept the rest
    assert len(second["messages"]) == 4
    assert not isinstance(second["messages"][0], ToolMessage)


def test_a_tool_result_alone_never_writes_the_dialogue_state(msw_engine: DeltaMemEngine) -> None:
    memory = DeltaMemory(msw_engine, router=SourceRouter(4, TOOL_STATES))
    memory.write([HumanMessage("hello")], scope="s")
    before = memory.state(scope="s").layers
    memory.write([ToolMessage("391", tool_call_id="c1", name="calculator")], scope="s")
    after = memory.state(scope="s").layers
    assert changed_states(before, after) == {TOOL_STATES["calculator"]}


def test_the_agent_runs_async(msw_engine: DeltaMemEngine) -> None:
    model = msw_model(msw_engine)
    agent = create_agent(
        model,
        tools=TOOLS,
        middleware=[DeltaMemMiddleware(model, keep_messages=4)],  # its async hook
        checkpointer=InMemorySaver(),
    )
    result = asyncio.run(agent.ainvoke({"messages": [HumanMessage("What is 3 * 3?")]}, thread("a")))
    assert isinstance(result["messages"][-1], AIMessage)
    memory = model.get_memory()
    assert settled(result["deltamem"], memory).to_bytes() == memory.state(scope="a").to_bytes()


def test_the_memory_field_has_a_fixed_size_once_the_window_is_full(
    msw_engine: DeltaMemEngine,
) -> None:
    model = msw_model(msw_engine)
    saver = InMemorySaver()
    agent = build_agent(model, saver, keep_messages=4)
    config = thread("sizes")
    sizes, message_counts = [], []
    for question in ("What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?", "What is 4 + 4?"):
        result = agent.invoke({"messages": [HumanMessage(question)]}, config)
        checkpoint = saver.get_tuple(config).checkpoint
        field = checkpoint["channel_values"]["deltamem"]
        # the state and keys part, then at most the last step's messages awaiting their write
        fixed = {k: v for k, v in field.items() if k not in ("pending", "checksum")}
        sizes.append(len(saver.serde.dumps_typed(fixed)[1]))
        assert len(field.get("pending", [])) <= 1
        message_counts.append(len(result["messages"]))
    assert len(set(sizes[1:])) == 1, sizes  # constant from the second turn on
    assert max(message_counts) <= 5, message_counts


# --- hand-built StateGraph + ToolNode ------------------------------------------------------


def test_two_threads_never_see_each_others_memory(msw_engine: DeltaMemEngine) -> None:
    model = msw_model(msw_engine)
    app = build_graph(model, InMemorySaver(), keep_messages=6)
    app.invoke({"messages": [HumanMessage("My wifi? Check the note.")]}, thread("a"))
    b = app.invoke({"messages": [HumanMessage("Look up my bike note.")]}, thread("b"))
    a = app.invoke({"messages": [HumanMessage("And the dentist?")]}, thread("a"))
    assert a["deltamem"]["state"] != b["deltamem"]["state"]
    # thread b alone, on a fresh memory, ends in the very same state: nothing of a leaked in
    alone = build_graph(msw_model(msw_engine), InMemorySaver(), keep_messages=6)
    b_alone = alone.invoke({"messages": [HumanMessage("Look up my bike note.")]}, thread("b"))
    assert b_alone["deltamem"]["state"] == b["deltamem"]["state"]


def test_state_history_shows_the_memory_at_each_step(msw_engine: DeltaMemEngine) -> None:
    app = build_graph(msw_model(msw_engine), InMemorySaver(), keep_messages=6)
    config = thread("history")
    app.invoke({"messages": [HumanMessage("Check my wifi note.")]}, config)
    app.invoke({"messages": [HumanMessage("Check my bike note.")]}, config)
    seen = [
        hashlib.sha256(s.values["deltamem"]["state"]).hexdigest()
        for s in app.get_state_history(config)
        if s.values.get("deltamem")
    ]
    # newest first; each agent step (2 per turn) left its own memory, unchanged by tool steps
    assert len(set(seen)) == 4, seen


def test_a_checkpoint_from_another_adapter_is_refused(msw_engine: DeltaMemEngine) -> None:
    plain_engine = get_engine(adapter="fresh")
    saver = InMemorySaver()
    plain = ChatDeltaMem(adapter="fresh", max_tokens=6, memory=DeltaMemory(plain_engine))
    app = build_graph(plain, saver)
    app.invoke({"messages": [HumanMessage("Check my wifi note.")]}, thread("x"))
    stored = app.get_state(thread("x")).values["deltamem"]
    other = build_graph(msw_model(msw_engine), saver)
    with pytest.raises(MemoryRecordError, match="adapter"):
        other.invoke({"messages": [HumanMessage("again")]}, thread("x"))
    assert app.get_state(thread("x")).values["deltamem"] == stored  # checkpoint untouched


def test_a_run_without_a_thread_id_is_refused_unless_a_scope_is_given(
    msw_engine: DeltaMemEngine,
) -> None:
    app = build_graph(msw_model(msw_engine))
    with pytest.raises(MissingScopeError, match="thread_id"):
        app.invoke({"messages": [HumanMessage("hi")]})
    model = msw_model(msw_engine)
    ephemeral = build_graph(model, scope="scratch")
    result = ephemeral.invoke({"messages": [HumanMessage("Check my wifi note.")]})
    memory = model.get_memory()
    assert (
        settled(result["deltamem"], memory).to_bytes() == memory.state(scope="scratch").to_bytes()
    )


def test_per_user_memory_is_shared_across_threads_through_a_store(
    msw_engine: DeltaMemEngine,
) -> None:
    store = InMemoryStore()
    router = SourceRouter(4, TOOL_STATES)
    model = msw_model(msw_engine, memory=DeltaMemory(msw_engine, store=store, router=router))
    app = build_graph(model, InMemorySaver(), user_key="user_id")
    first = app.invoke(
        {"messages": [HumanMessage("Check my wifi note.")]}, thread("t1", user_id="noor")
    )
    assert "deltamem" not in first or first["deltamem"] is None  # lives in the store
    item = store.get(model.get_memory().namespace, "user:noor")
    assert item is not None
    after_first = model.get_memory().state(scope="user:noor").to_bytes()
    # a new process (a fresh DeltaMemory on the same store) in another thread of the same
    # user starts from that memory; another user starts empty
    reloaded = DeltaMemory(msw_engine, store=store, router=router)
    assert reloaded.state(scope="user:noor").to_bytes() == after_first
    assert reloaded.stats(scope="user:lina")["writes_per_state"] == [0, 0, 0, 0]
    app2 = build_graph(msw_model(msw_engine, memory=reloaded), InMemorySaver(), user_key="user_id")
    app2.invoke({"messages": [HumanMessage("And my bike?")]}, thread("t2", user_id="noor"))
    counts = reloaded.stats(scope="user:noor")["writes_per_state"]
    assert counts[0] == 6 and counts[TOOL_STATES["lookup_note"]] == 2  # both threads' writes


# --- persistence across processes (SqliteSaver) and the examples ---------------------------


def _run_example(script: str, *args: str, kill: bool = False) -> subprocess.CompletedProcess:
    code = (
        "import os, runpy, signal, sys\n"
        f"sys.argv = [{script!r}, *{list(args)!r}]\n"
        f"runpy.run_path({str(EXAMPLES / script)!r}, run_name='__main__')\n"
        "sys.stdout.flush()\n" + ("os.kill(os.getpid(), signal.SIGKILL)\n" if kill else "")
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def _field(output: str, name: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.startswith(name + ":")]
    return line.split(":", 1)[1].strip()


def test_memory_survives_a_killed_process_bit_for_bit(tmp_path: Path) -> None:
    db = str(tmp_path / "chat.sqlite")
    first = _run_example("persistent_chat.py", "--db", db, "--max-tokens", "6", "Hi, I'm Noor.")
    assert first.returncode == 0, first.stderr[-2000:]
    killed = _run_example(
        "persistent_chat.py", "--db", db, "--max-tokens", "6", "I live in Porto.", kill=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _field(killed.stdout, "memory before") == _field(first.stdout, "memory after")
    resumed = _run_example("persistent_chat.py", "--db", db, "--max-tokens", "6", "Where?")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _field(resumed.stdout, "memory before") == _field(killed.stdout, "memory after")
    # and the checkpoint read back in this process holds those very bytes
    with sqlite3.connect(db, check_same_thread=False) as connection:
        saver = SqliteSaver(connection)
        values = saver.get_tuple(thread("persistent-chat")).checkpoint["channel_values"]
        digest = hashlib.sha256(values["deltamem"]["state"]).hexdigest()[:16]
    assert digest == _field(resumed.stdout, "memory after")
    history = _run_example("persistent_chat.py", "--db", db, "--history")
    hashes = {line.rsplit(" ", 1)[1] for line in history.stdout.splitlines()}
    for run in (first, killed, resumed):
        assert _field(run.stdout, "memory after") in hashes


def test_example_agent_tools(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "agent_tools.py"), run_name="not_main")["main"](
        ["--max-tokens", "24", "--questions", "What is 17 * 23?", "What is my wifi password?"]
    )
    out = capsys.readouterr().out
    assert out.count("agent calls ") >= 2
    assert "calculator -> " in out or "lookup_note -> " in out
    assert out.count("assistant: ") == 2
    assert "writes per state" in out


def test_example_replace_buffer_memory(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "replace_buffer_memory.py"), run_name="not_main")["main"](
        ["--turns", "5", "--max-tokens", "4", "--window", "2"]
    )
    rows = [
        ln
        for ln in capsys.readouterr().out.splitlines()
        if ln.startswith("| ") and ln.endswith(" s |")
    ]
    assert len(rows) == 5
    buffer_tokens = [int(r.split("|")[2]) for r in rows]
    deltamem_tokens = [int(r.split("|")[3]) for r in rows]
    assert buffer_tokens == sorted(buffer_tokens) and buffer_tokens[-1] > buffer_tokens[0]
    assert deltamem_tokens[-1] < buffer_tokens[-1]
    assert max(deltamem_tokens[2:]) - min(deltamem_tokens[2:]) < 40  # flat once windowed
