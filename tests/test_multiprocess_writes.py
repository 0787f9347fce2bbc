"""K processes × M turns into one user's scope through one store: nothing lost, nothing torn.

A zygote (`multiwriter_worker.py`) forks K writer processes per round; each writes M turns into
scope ``shared`` of the same store (SQLite file, PostgreSQL database), starting together. While
they write, a reader here loads the scope over and over on its own connection. Afterwards:

* the scope holds all K·M turns: segment count, write counts, and every writer's turns in its
  own order in the log;
* its state is bit for bit the replay of its log, in log (commit) order, into an empty state;
* every read during the writes was a whole, valid record (checksum and all), and the segment
  count a reader saw never went down.

The control runs the same writers without the cross-process lock and must lose turns: that is
what the first round would show if the lock did not work.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore
from langgraph.store.sqlite import SqliteStore
from multiwriter_worker import SCOPE, open_store, turn
from postgres_support import temporary_database
from reliability_support import build_tiny_engine

from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.memory import DeltaMemory

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
K, M = 3, 4


class Zygote:
    """The worker process; one command line in, one answer line out."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.stderr = log.open("wb")
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "multiwriter_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=HERE.parent,
            env=env,
        )
        assert self.read(180) == "ready", log.read_text()[-3000:]

    def read(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the worker did not answer in {timeout} s: {self.log.read_text()[-3000:]}"
        return self.proc.stdout.readline().decode().strip()

    def round(self, kind: str, target: str, lock: bool, folder: Path) -> list[int]:
        assert self.proc.stdin is not None
        folder.mkdir()
        mode = "lock" if lock else "nolock"
        self.proc.stdin.write(f"round {kind} {target} {K} {M} {mode} {folder}\n".encode())
        self.proc.stdin.flush()
        answer = self.read(300)
        assert answer.startswith("done"), answer
        errors = [p.read_text() for p in sorted(folder.glob("error-*"))]
        assert not errors, errors
        return [int(s) for s in answer.split()[1:]]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    worker = Zygote(tmp_path_factory.mktemp("multiwriter") / "worker.log")
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def tiny(embedded: Any) -> DeltaMemEngine:
    return build_tiny_engine(embedded[1])  # the same seeds as the worker's: the same weights


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def _sqlite_target(tmp_path: Path) -> str:
    path = str(tmp_path / "shared.sqlite")
    with sqlite3.connect(path) as conn:
        SqliteStore(conn).setup()
    conn.close()
    return path


def _postgres_target(url: str) -> str:
    store = open_store("postgres", url)
    store.setup()
    with store.conn:  # a clean table per round
        store.conn.execute("DELETE FROM store")
    return url


class Reader:
    """Loads the scope in a loop on its own connection while the writers write."""

    def __init__(self, memory: DeltaMemory) -> None:
        self.memory = memory
        self.counts: list[int] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.counts.append(self.memory.stats(scope=SCOPE)["segments"])
            except BaseException as err:  # a torn or invalid record
                self.errors.append(err)
                return
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def _run_round(
    zygote: Zygote,
    tiny: DeltaMemEngine,
    kind: str,
    target: str,
    folder: Path,
    lock: bool,
    reader_store: Callable[[], BaseStore],
) -> tuple[DeltaMemory, Reader]:
    reader = Reader(DeltaMemory(tiny, store=reader_store()))
    try:
        statuses = zygote.round(kind, target, lock, folder)
    finally:
        reader.finish()
    assert statuses == [0] * K, statuses
    return DeltaMemory(tiny, store=reader_store()), reader


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_k_processes_lose_no_write_and_nobody_reads_a_torn_record(
    kind: str, zygote: Zygote, tiny: DeltaMemEngine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        target = _sqlite_target(tmp_path)
    else:
        target = _postgres_target(request.getfixturevalue("postgres_url"))
    memory, reader = _run_round(
        zygote, tiny, kind, target, tmp_path / "run", True, lambda: open_store(kind, target)
    )
    stats = memory.stats(scope=SCOPE)
    print(f"{kind}: {stats['segments'] // 2} of {K * M} turns stored; {len(reader.counts)} reads")
    assert stats["segments"] == 2 * K * M
    assert sum(stats["writes_per_state"]) == 2 * K * M
    log = json.loads(memory.export(scope=SCOPE))["log"]
    for writer in range(K):  # every turn of every writer, in that writer's order
        own = [group for group in log if group[0]["content"].startswith(f"Writer {writer},")]
        assert own == [turn(writer, step) for step in range(M)], f"writer {writer}"
    replay = DeltaMemory(tiny)
    for group in log:  # commit order
        replay.write(group, scope="replay")
    assert memory.state(scope=SCOPE).to_bytes() == replay.state(scope="replay").to_bytes()
    assert not reader.errors, reader.errors
    assert len(reader.counts) > 10, "the reader did not overlap the writes"
    assert reader.counts == sorted(reader.counts), "a reader saw the scope go back"


def test_the_control_without_the_lock_loses_writes(
    zygote: Zygote, tiny: DeltaMemEngine, tmp_path: Path
) -> None:
    target = _sqlite_target(tmp_path)
    memory, _ = _run_round(
        zygote,
        tiny,
        "sqlite",
        target,
        tmp_path / "run",
        False,
        lambda: open_store("sqlite", target),
    )
    turns = memory.stats(scope=SCOPE)["segments"] // 2
    print(f"without the lock: {turns} of {K * M} turns stored")
    assert turns < K * M
