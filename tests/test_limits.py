"""Resource caps of `DeltaMemory`: message size, segments per write, scopes per process."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.engine import get_engine
from langchain_deltamem.memory import DeltaMemory, MemoryLimitError


def test_an_oversized_message_is_refused_before_any_work() -> None:
    memory = DeltaMemory(max_message_chars=10)  # no engine: it must not even be loaded
    with pytest.raises(MemoryLimitError, match="11 characters, more than max_message_chars=10"):
        memory.write([HumanMessage("x" * 11)], scope="s")
    assert memory._engine is None


@pytest.mark.parametrize("name", ["max_message_chars", "max_segments_per_write", "max_scopes"])
@pytest.mark.parametrize("value", [0, -3, 2.5, "10"])
def test_bad_caps_are_refused(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        DeltaMemory(**{name: value})


@pytest.mark.slow
def test_segment_and_scope_caps_refuse_without_touching_what_is_stored() -> None:
    memory = DeltaMemory(get_engine(), max_segments_per_write=2, max_scopes=2)
    memory.write([HumanMessage("hi"), AIMessage("hello")], scope="a")
    before = memory.state(scope="a").to_bytes()
    with pytest.raises(MemoryLimitError, match="3 messages in one write exceed"):
        memory.write([HumanMessage("1"), AIMessage("2"), HumanMessage("3")], scope="a")
    assert memory.state(scope="a").to_bytes() == before
    # the whole history handed again counts only its new messages
    memory.write(
        [HumanMessage("hi"), AIMessage("hello"), HumanMessage("x")], scope="a", skip_written=True
    )
    memory.state(scope="b")
    with pytest.raises(MemoryLimitError, match="max_scopes=2"):
        memory.state(scope="c")
    assert memory.scopes() == ["a", "b"]
    memory.write([HumanMessage("still fine")], scope="b")


@pytest.mark.slow
def test_the_chat_model_refuses_an_oversized_turn_before_generating() -> None:
    memory = DeltaMemory(get_engine(), max_message_chars=50)
    model = ChatDeltaMem(memory=memory, max_tokens=4, scope="t")
    with pytest.raises(MemoryLimitError, match="max_message_chars=50"):
        model.invoke("y" * 51)
    assert memory.stats(scope="t")["segments"] == 0
