"""The package surface: root imports, a lean base install and its extras.

A lean install is simulated by a subprocess whose site-packages is this venv's without the
extras' distributions (a folder of links to everything else, ``python -S``): the LangChain
entry points import and build from the root, the CLI starts, and a command whose extra is
missing exits naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import langchain_deltamem
from langchain_deltamem import extras

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")

# the extras' distributions (import names and dist-info prefixes) and their own dependencies
EXTRA_DISTRIBUTIONS = {
    "matplotlib", "mpl_toolkits", "nltk", "accelerate", "psycopg", "psycopg_binary",
    "psycopg_pool", "aiosqlite", "sqlite_vec", "langgraph_checkpoint_sqlite",
    "langgraph_checkpoint_postgres", "llguidance",
}  # fmt: skip
SAVERS = {"sqlite", "postgres"}  # inside langgraph's namespace: langgraph.store.sqlite, …
LEAN = textwrap.dedent(
    """
    import importlib.util, sys
    from langchain_deltamem.extras import EXTRAS
    for names in EXTRAS.values():
        for name in names:
            try:
                assert importlib.util.find_spec(name) is None, name
            except ModuleNotFoundError:
                pass
    from langchain_deltamem import ChatDeltaMem, DeltaMemMiddleware, DeltaMemory, GraphMemory
    from langgraph.store.memory import InMemoryStore

    model = ChatDeltaMem(memory=DeltaMemory(store=InMemoryStore()), default_scope="x")
    GraphMemory(model), DeltaMemMiddleware(model)
    from langchain_deltamem import cli
    for argv in (["--help"], ["bench", "core"], ["eval", "perplexity"]):
        try:
            cli.main(argv)
        except SystemExit as done:
            print("exit", done.code)
    """
)


def test_the_langchain_entry_points_are_at_the_root() -> None:
    from langchain_deltamem.chat_model import ChatDeltaMem
    from langchain_deltamem.graph import GraphMemory
    from langchain_deltamem.memory import DeltaMemory
    from langchain_deltamem.middleware import DeltaMemMiddleware

    assert langchain_deltamem.ChatDeltaMem is ChatDeltaMem
    assert langchain_deltamem.DeltaMemory is DeltaMemory
    assert langchain_deltamem.DeltaMemMiddleware is DeltaMemMiddleware
    assert langchain_deltamem.GraphMemory is GraphMemory
    assert {"ChatDeltaMem", "GraphMemory"} <= set(dir(langchain_deltamem))
    for name in langchain_deltamem.__all__:
        assert getattr(langchain_deltamem, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        langchain_deltamem.Nope  # noqa: B018


def test_the_base_install_is_lean_and_every_extra_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for heavy in ("matplotlib", "nltk", "accelerate", "langgraph-checkpoint", "psycopg"):
        assert heavy not in base, heavy
    optional = project["optional-dependencies"]
    assert set(extras.EXTRAS) <= set(optional)
    assert all(extra in optional["all"][0] for extra in extras.EXTRAS)


def lean_site(folder: Path) -> Path:
    """Links to this venv's site-packages entries, less the extras' distributions."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0]
        if top in EXTRA_DISTRIBUTIONS or entry.suffix == ".pth":
            continue
        if entry.name != "langgraph":
            (folder / entry.name).symlink_to(entry)
            continue
        for child in entry.iterdir():  # langgraph, without its savers
            target = folder / "langgraph" / child.name
            target.parent.mkdir(exist_ok=True)
            if child.name not in ("store", "checkpoint"):
                target.symlink_to(child)
                continue
            target.mkdir()
            for part in child.iterdir():
                if part.name not in SAVERS:
                    (target / part.name).symlink_to(part)
    return folder


def test_a_lean_install_imports_runs_and_names_missing_extras(tmp_path: Path) -> None:
    site = lean_site(tmp_path / "site-packages")
    done = subprocess.run(
        [sys.executable, "-S", "-c", LEAN],
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{site}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-4:-1] == ["exit 0", "exit 2", "exit 2"], done.stdout
    assert "deltamem bench needs matplotlib" in done.stderr
    assert "pip install 'langchain-deltamem[bench]'" in done.stderr
    assert "pip install 'langchain-deltamem[eval]'" in done.stderr


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRAS, "eval", ("nltk", "no_such_module_here"))
    assert extras.missing("eval") == ["no_such_module_here"]
    with pytest.raises(extras.MissingExtraError, match=r"langchain-deltamem\[eval\]"):
        extras.require("eval", "LoCoMo scoring")
    with pytest.raises(ValueError, match="unknown extra"):
        extras.missing("gpu")
