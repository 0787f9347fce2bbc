"""The README's Python snippets run as written (in a scratch directory, on the real backbone).

The one change made before running: the PostgreSQL snippet's ``DB_URI`` points at a throwaway
database of the machine's server (`postgres_support`). What each snippet claims is checked
after it ran, from the names it left behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from postgres_support import temporary_database

from langchain_deltamem import chat_model as chat_model_module

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
DB_URI = 'DB_URI = "postgresql://postgres@127.0.0.1:5432/postgres"'


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def snippet(marker: str) -> str:
    found = [code for code in snippets() if marker in code]
    assert len(found) == 1, f"{len(found)} README snippets contain {marker!r}"
    return found[0]


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets create their SQLite files here
    monkeypatch.setattr(chat_model_module, "_SHARED_MEMORIES", {})  # a memory of their own


def run(code: str) -> dict[str, Any]:
    names: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), names)
    return names


def test_every_snippet_is_covered() -> None:
    markers = ["model.get_memory().stats", "SqliteStore(connection)", "def calculator"]
    markers += ["PostgresSaver.from_conn_string", "handle.memory(state) as run"]
    assert len(snippets()) == len(markers)
    for marker in markers:
        snippet(marker)


def test_chat_model_snippet() -> None:
    names = run(snippet("model.get_memory().stats"))
    assert names["model"].get_memory().stats(scope="alice")["segments"] == 4


def test_sqlite_store_snippet(tmp_path: Path) -> None:
    names = run(snippet("SqliteStore(connection)"))
    assert names["model"].get_memory().stats(scope="alice")["segments"] == 2
    assert (tmp_path / "memory.sqlite").exists()


def test_agent_snippet(tmp_path: Path) -> None:
    names = run(snippet("def calculator"))
    config = {"configurable": {"thread_id": "alice"}}
    assert names["agent"].get_state(config).values["deltamem"]["state"]
    assert (tmp_path / "agent.sqlite").exists()


def test_postgres_snippet() -> None:
    code = snippet("PostgresSaver.from_conn_string")
    assert DB_URI in code
    with temporary_database() as url:
        names = run(code.replace(DB_URI, f"DB_URI = {url!r}"))
        from langgraph.store.postgres import PostgresStore

        from langchain_deltamem import DeltaMemory

        with PostgresStore.from_conn_string(url) as store:  # another connection sees it
            memory = DeltaMemory(names["model"].engine, store=store)
            assert memory.scopes() == ["user:alice"]
            assert memory.stats(scope="user:alice")["segments"] >= 2


def test_engine_snippet() -> None:
    names = run(snippet("handle.memory(state) as run"))
    assert names["state"].nbytes_per_conversation == 7_680  # the size the README quotes for SSW
    assert names["run"].correction_ratio()


def test_state_sizes_quoted_per_strategy() -> None:
    from langchain_deltamem.engine import get_engine

    text = README.read_text()
    for adapter, size in (("fresh-tsw", 7_680), ("fresh", 7_680), ("fresh-msw", 30_720)):
        assert get_engine(adapter=adapter).handle.new_state().nbytes_per_conversation == size
    assert "7,680 bytes for TSW and SSW, 30,720 bytes for MSW" in text
    assert "7,680 bytes with one state per layer (SSW, TSW), 30,720 bytes with MSW" in text
    for adapter, size in (("smollm2-ssw", 30_720), ("smollm2-msw", 122_880)):
        assert get_engine(adapter=adapter).handle.new_state().nbytes_per_conversation == size
    assert "30,720\nbytes with the packaged rank-16 SSW adapter, 122,880 bytes" in text
