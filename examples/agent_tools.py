"""A multi-step, tool-using agent with δ-mem memory: `create_agent` + `DeltaMemMiddleware`.

Two real tools: ``calculator`` (arithmetic, parsed safely with ``ast``) and ``lookup_note``
(a small notebook). Each user turn takes several agent steps: the model calls a tool, the tool
runs, the model answers from the result. A 135M model rarely decides to call a tool on its own,
so a small middleware forces a call on the first step of each turn (``tool_choice="any"``,
decoded under the tool's JSON schema) and offers no tools after a result.

Memory: each AI step is written to the dialogue state, each tool result to its tool's own state
(the packaged ``smollm2-msw`` adapter has 4 states); only the last ``--keep`` messages stay in
the graph state. The adapter was trained on remembered facts, not on tool results (its MSW form
shares the SSW maps across states), so do not expect much recall of tool outputs; the printed
write counts show where each step went.

    python examples/agent_tools.py [--max-tokens 48] [--keep 6]
"""

from __future__ import annotations

import argparse
import ast
import operator
from collections.abc import Callable

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import get_engine
from langchain_deltamem.memory import DeltaMemory
from langchain_deltamem.middleware import DeltaMemMiddleware

NOTES = {
    "wifi": "The office wifi password is heron-42.",
    "dentist": "Dentist appointment: Thursday 3 pm, Dr. Okafor.",
    "bike": "The bike lock code is 7319.",
}

_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 12 * (3 + 4)."""
    try:
        return str(_evaluate(ast.parse(expression, mode="eval")))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as err:
        return f"error: {err}"


@tool
def lookup_note(topic: str) -> str:
    """Look up the user's note on a topic (wifi, dentist, bike)."""
    for key, note in NOTES.items():
        if key in topic.lower():
            return note
    return f"no note on {topic!r}; topics: {', '.join(NOTES)}"


@wrap_model_call
def call_a_tool_first(
    request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
) -> ModelResponse:
    """Force a tool call on a turn's first step; answer in text once a result is in."""
    after_tool = bool(request.messages) and isinstance(request.messages[-1], ToolMessage)
    return handler(request.override(tool_choice="none" if after_tool else "any"))


QUESTIONS = [
    "What is 17 * 23?",
    "What is my wifi password? Check my notes.",
    "When is my dentist appointment?",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--keep", type=int, default=6, help="messages kept in the graph state")
    parser.add_argument("--thread", default="agent-tools-demo")
    parser.add_argument("--questions", nargs="*", default=QUESTIONS)
    args = parser.parse_args(argv)

    memory = DeltaMemory(get_engine(adapter="smollm2-msw"))  # this run's own memory
    model = ChatDeltaMem(adapter="smollm2-msw", max_tokens=args.max_tokens, memory=memory)
    agent = create_agent(
        model,
        tools=[calculator, lookup_note],
        system_prompt="You are a helpful assistant. Use the tools to answer.",
        middleware=[call_a_tool_first, DeltaMemMiddleware(model, keep_messages=args.keep)],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": args.thread}}
    seen: set[str | None] = set()
    for question in args.questions:
        print(f"\nuser: {question}")
        result = agent.invoke({"messages": [HumanMessage(question)]}, config)
        new = [m for m in result["messages"] if m.id not in seen]
        seen.update(m.id for m in result["messages"])
        for message in new:
            if message.type == "ai" and message.tool_calls:
                for call in message.tool_calls:
                    print(f"  agent calls {call['name']}({call['args']})")
            elif message.type == "tool":
                print(f"  {message.name} -> {message.content}")
        print(f"assistant: {result['messages'][-1].content}")
        stats = memory.stats(scope=args.thread)
        print(
            f"  memory: writes per state {stats['writes_per_state']}, "
            f"{len(result['messages'])} messages kept in the graph state, "
            f"snapshot {len(result['deltamem']['state']):,} bytes"
        )


if __name__ == "__main__":
    main()
