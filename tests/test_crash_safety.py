"""Crash safety: writers SIGKILLed mid-write leave the state before or after.

A zygote process (`crash_worker.py`, the same venv python) loads the tiny engine once and forks
writer processes. Each writer opens the database, logs what it found, then writes memory in a
loop, logging the record's digest before each write, the digest the write will store
(``intend``, computed first on an unpersisted shadow copy) and the digest after it. The test
kills each writer with SIGKILL, half the time at a random moment and half the time right after
it logged entering the memory write's first SQLite INSERT or, as often, its COMMIT (after the
INSERT ran; the writer lingers there, so the kill lands inside the open transaction). Then, in
this process, with a new connection:

* the database passes ``PRAGMA integrity_check``;
* what is stored for the scope is the state before the interrupted write or the one it
  intended (never another, never a mix), and it loads (`DeltaMemory` / the graph's restore);
* the next writer starts from exactly that state;
* the other scope, written once before the first kill, is exactly as it was.

Two targets: a LangGraph `SqliteStore` behind `DeltaMemory`, and a `SqliteSaver` checkpoint
written through `graph.agent_node` (the graph state's ``deltamem`` field, its pending writes and
`get_state` must all hold an allowed state).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_worker import OTHER, SCOPE, build_graph, digest, field_digest
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.store.base import PutOp
from langgraph.store.memory import InMemoryStore
from langgraph.store.sqlite import SqliteStore

from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.memory import DEFAULT_NAMESPACE, DeltaMemory

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
KILLS = 8  # per target: half at random moments, half inside a SQLite transaction
START_TIMEOUT = 120.0


class Zygote:
    """The child process that forks writers; commands and answers are single lines."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=HERE.parent,
            env=env,
        )
        self.buffer = b""
        self.writers: list[int] = []
        assert self.read(START_TIMEOUT) == "ready", log.read_text()[-3000:]

    def read(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("the zygote did not answer")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the zygote exited with {self.proc.wait()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def ask(self, *command: object) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(map(str, command)) + "\n").encode())
        self.proc.stdin.flush()
        return self.read()

    def fork(self, kind: str, db: Path, log: Path, seed: int) -> int:
        answer = self.ask("fork", kind, db, log, seed)
        assert answer.startswith("pid "), answer
        self.writers.append(int(answer.split()[1]))
        return self.writers[-1]

    def close(self) -> None:
        for pid in self.writers:  # only the writers this zygote forked for us
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()
        self.stderr.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    child = Zygote(tmp_path_factory.mktemp("zygote") / "zygote.stderr")
    yield child
    child.close()


@pytest.fixture(scope="module")
def engine(tiny_engine: DeltaMemEngine) -> DeltaMemEngine:
    """The same tiny engine the writers use (same seeds: same fingerprints)."""
    return tiny_engine


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _wait_for(zygote: Zygote, pid: int, log: Path, *prefixes: str, after: int = 0) -> int:
    """Wait until the writer logged lines starting with ``prefixes``, in that order, beyond
    line ``after``; returns the number of lines then. Fails if the writer died."""
    deadline = time.monotonic() + START_TIMEOUT
    prefix = prefixes[-1]
    while time.monotonic() < deadline:
        lines, want = _lines(log), list(prefixes)
        for line in lines[after:]:
            if want and line.startswith(want[0]):
                want.pop(0)
        if not want:
            return len(lines)
        if zygote.ask("poll", pid) != "alive":
            pytest.fail(f"writer {pid} died before '{prefix}': {lines[-20:]}")
        time.sleep(0.001 if prefix.startswith("phase") else 0.02)
    pytest.fail(f"writer {pid} never logged '{prefix}'")


def _kill(zygote: Zygote, pid: int, log: Path) -> None:
    os.kill(pid, signal.SIGKILL)
    status = int(zygote.ask("wait", pid).split()[1])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"writer {pid} ended otherwise (status {status}): {_lines(log)[-10:]}"
    )


def allowed_after_kill(lines: list[str]) -> tuple[set[str], str]:
    """The states the database may hold after the log's last line, and where the kill landed.

    ``settled``: what the writer found (``start``, all already verified legal) or its last
    completed write (``after``); ``inflight``: the state an interrupted write intended. Also
    checks the log's chain: each write starts from a settled state and ends where it meant to."""
    settled: set[str] = set()
    inflight: set[str] = set()
    moment = "idle"
    for line in lines:
        kind, _, rest = line.partition(" ")
        assert kind not in ("MISMATCH", "ERROR"), line
        value = rest.split(" ")[0]
        if kind == "start":
            settled, moment = set(rest.split()), "idle"
        elif kind == "turn":
            moment = "preparing (nothing written yet)"
        elif kind == "before":
            assert value in settled, f"a write started from an unexpected state: {line}"
            moment = "preparing (nothing written yet)"
        elif kind == "intend":
            inflight, moment = {value}, "writing (before SQL)"
        elif kind == "phase":
            moment = (
                f"inside the transaction ({rest})"
                if inflight
                else "in a transaction before the memory write (input checkpoint)"
            )
        elif kind == "after":
            assert value in inflight, line
            settled, inflight, moment = {value}, set(), "idle"
    assert settled, lines
    return settled | inflight, moment


AT_COMMIT = "inside the transaction (COMMIT)"  # the moment of a kill after the INSERT ran


def _kill_plan(seed: int) -> list[float | str]:
    """Delays for random kills, or the log line (after ``intend``) to kill at: the memory
    write's first INSERT (BEGIN done, nothing written) or its COMMIT (the INSERT ran)."""
    rng = random.Random(seed)
    targets = ["phase INSERT", "phase COMMIT"]
    return [rng.uniform(0.0, 1.5) if k % 2 == 0 else targets[k // 2 % 2] for k in range(KILLS)]


def _kill_writer(
    zygote: Zygote,
    kind: str,
    db: Path,
    log: Path,
    when: float | str,
    on_start: Callable[[], None] | None = None,
) -> int:
    pid = zygote.fork(kind, db, log, seed=random.randrange(10**6))
    seen = _wait_for(zygote, pid, log, "start")
    if on_start is not None:
        on_start()
    if isinstance(when, str):
        _wait_for(zygote, pid, log, "intend", when, after=seen)  # inside the memory write
    else:
        time.sleep(when)
    _kill(zygote, pid, log)
    return pid


def _count_moment(
    moments: Counter[str], moment: str, lines: list[str], *, single_insert: bool = True
) -> None:
    """Count the full moment. Where one write is one INSERT then COMMIT (the store), a COMMIT
    kill must come after this write's INSERT ran; a checkpoint write spans several
    statements and transactions, so a COMMIT there may close another of its transactions."""
    moments[moment] += 1
    if moment == AT_COMMIT and single_insert:
        since = lines[max(i for i, line in enumerate(lines) if line.startswith("intend ")) :]
        assert any(line.startswith("phase INSERT") for line in since), since


def _check_moments(moments: Counter[str]) -> None:
    print(f"kill moments: {dict(moments)}")  # shown with -s; the results doc quotes them
    assert sum(moments.values()) == KILLS
    inside = sum(n for m, n in moments.items() if m.startswith("inside the transaction"))
    assert inside >= 2, moments  # the point of the exercise
    assert moments[AT_COMMIT] >= 1, moments  # between the INSERT and the COMMIT at least once


def _start_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("start "))


def _integrity(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_sqlite_store_survives_sigkill_mid_write(
    zygote: Zygote, engine: DeltaMemEngine, tmp_path: Path
) -> None:
    db = tmp_path / "store.sqlite"
    moments: Counter[str] = Counter()
    verified: str | None = None
    other: list[str] = []  # the other scope's digest, read before the first kill

    def read_other() -> None:
        if not other:  # the first writer stored it before logging "start"
            conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
            try:
                item = SqliteStore(conn).get(DEFAULT_NAMESPACE, OTHER)
                assert item is not None, "the first writer did not store the other scope"
                other.append(digest(json.dumps(item.value, sort_keys=True).encode()))
            finally:
                conn.close()

    for k, when in enumerate(_kill_plan(seed=17)):
        log = tmp_path / f"store-writer-{k}.log"
        _kill_writer(zygote, "store", db, log, when, on_start=read_other)
        lines = _lines(log)
        if verified is not None:
            assert _start_line(lines) == f"start {verified}", "the restart found another state"
        allowed, moment = allowed_after_kill(lines)
        _count_moment(moments, moment, lines)
        _integrity(db)
        conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        try:
            store = SqliteStore(conn)
            item = store.get(DEFAULT_NAMESPACE, SCOPE)
            assert item is not None
            stored = digest(json.dumps(item.value, sort_keys=True).encode())
            assert stored in allowed, f"kill {k} ({moment}): stored state is neither before/after"
            memory = DeltaMemory(engine, store=store)  # and it loads, as exactly those bytes
            assert digest(memory.export(scope=SCOPE)) == stored
            assert digest(memory.export(scope=OTHER)) == other[0], f"kill {k}: other scope"
        finally:
            conn.close()
        verified = stored
    _check_moments(moments)


def test_sqlite_checkpoint_survives_sigkill_mid_write(
    zygote: Zygote, engine: DeltaMemEngine, tmp_path: Path
) -> None:
    db = tmp_path / "checkpoints.sqlite"
    config = {"configurable": {"thread_id": SCOPE}}
    moments: Counter[str] = Counter()
    previous: set[str] | None = None
    for k, when in enumerate(_kill_plan(seed=29)):
        log = tmp_path / f"graph-writer-{k}.log"
        _kill_writer(zygote, "graph", db, log, when)
        lines = _lines(log)
        if previous is not None:  # what the restarted writer found was legal
            assert set(_start_line(lines).split()[1:]) <= previous, (lines[:1], previous)
        allowed, moment = allowed_after_kill(lines)
        _count_moment(moments, moment, lines, single_insert=False)
        _integrity(db)
        conn = sqlite3.connect(db, check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            stored = saver.get_tuple(config)
            assert stored is not None
            field = stored.checkpoint["channel_values"].get("deltamem")
            assert field_digest(field) in allowed, f"kill {k} ({moment}): checkpoint field"
            pending = [v for _, channel, v in stored.pending_writes or [] if channel == "deltamem"]
            assert all(field_digest(v) in allowed for v in pending), f"kill {k}: pending write"
            graph = build_graph(engine, saver)
            values = graph.get_state(config).values
            assert field_digest(values.get("deltamem")) in allowed
            if field is not None:  # it loads: restored into a memory without error
                DeltaMemory(engine).restore(field, scope="check")
        finally:
            conn.close()
        previous = allowed
    _check_moments(moments)


def test_a_turn_killed_between_reply_and_write_is_replayed_once(
    zygote: Zygote, engine: DeltaMemEngine, tmp_path: Path
) -> None:
    """The chat model returns before the turn is written; the turn is then pending in the
    store. A kill after the reply (half the kills: at the ``replied`` line) must lose nothing:
    the next load applies the pending turn, giving exactly the intended record; a kill before
    the reply may leave the state before the turn or after it, never another; and a second
    load applies nothing more."""
    db = tmp_path / "turns.sqlite"
    rng = random.Random(41)
    plan = [rng.uniform(0.0, 1.0) if k % 2 else "replied" for k in range(KILLS)]
    verified: str | None = None
    pending_seen = 0
    for k, when in enumerate(plan):
        log = tmp_path / f"turn-writer-{k}.log"
        pid = zygote.fork("turns", db, log, seed=rng.randrange(10**6))
        seen = _wait_for(zygote, pid, log, "start")
        if when == "replied":
            _wait_for(zygote, pid, log, "intend", "replied", after=seen)
        else:
            time.sleep(when)
        _kill(zygote, pid, log)
        lines = _lines(log)
        if verified is not None:
            assert _start_line(lines) == f"start {verified}", "the restart found another state"
        allowed, _ = allowed_after_kill(lines)
        last = lines[-1].split()[0]
        _integrity(db)
        conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        try:
            store = SqliteStore(conn)
            raw = store.get(DEFAULT_NAMESPACE, SCOPE).value
            pending_seen += "pending" in raw
            loaded = digest(DeltaMemory(engine, store=store).export(scope=SCOPE))
            assert loaded in allowed, f"kill {k}: the loaded record is neither before nor after"
            if last == "replied":  # the reply was out: the turn must be there
                intended = next(x for x in reversed(lines) if x.startswith("intend "))
                assert loaded == intended.split()[1], f"kill {k}: a replied turn was lost"
            assert "pending" not in store.get(DEFAULT_NAMESPACE, SCOPE).value
            again = digest(DeltaMemory(engine, store=store).export(scope=SCOPE))
            assert again == loaded, f"kill {k}: a second load changed the record"
        finally:
            conn.close()
        verified = loaded
    assert pending_seen >= 2, "no kill landed between a reply and its write"


def test_the_kill_oracle_rejects_a_foreign_state() -> None:
    """A stored digest that is neither the state before nor the intended one is rejected."""
    lines = ["start s0", "before s0 write", "intend s1", "phase INSERT OR REPLACE"]
    allowed, moment = allowed_after_kill(lines)
    assert allowed == {"s0", "s1"} and moment.startswith("inside the transaction")
    assert "s2" not in allowed
    lines += ["phase COMMIT"]
    assert allowed_after_kill(lines) == ({"s0", "s1"}, AT_COMMIT)
    with pytest.raises(AssertionError, match="unexpected state"):
        allowed_after_kill(["start s0", "before s9 write"])
    # a write that stored something other than what it intended, or nothing it intended
    with pytest.raises(AssertionError, match="after s2"):
        allowed_after_kill(["start s0", "before s0 write", "intend s1", "after s2"])
    with pytest.raises(AssertionError, match="after s1"):
        allowed_after_kill(["start s0", "after s1"])
    # a writer that saw its own write go wrong, or died of an error, is never an allowed log
    with pytest.raises(AssertionError, match="MISMATCH a != b"):
        allowed_after_kill(["start s0", "before s0 write", "intend b", "MISMATCH a != b"])
    with pytest.raises(AssertionError, match="ERROR"):
        allowed_after_kill(["start s0", "ERROR OperationalError: database is locked"])


class FailingStore(InMemoryStore):
    """A store whose writes fail on demand (a full disk, a locked database)."""

    fail = False

    def batch(self, ops: Any) -> Any:
        ops = list(ops)
        if self.fail and any(isinstance(op, PutOp) for op in ops):
            raise sqlite3.OperationalError("database or disk is full")
        return super().batch(ops)


def test_a_failed_store_write_leaves_the_scope_as_it_was(engine: DeltaMemEngine) -> None:
    """If persisting fails, the operation fails as a whole: the process's scope is not left
    ahead of what is stored (a retry would otherwise write the same turn twice)."""
    store = FailingStore()
    memory = DeltaMemory(engine, store=store)
    memory.write([{"role": "user", "content": "first note"}], scope="s")
    memory.write([{"role": "user", "content": "source"}], scope="src")
    stored, held = store.get(DEFAULT_NAMESPACE, "s").value, memory.export(scope="s")
    snapshot = memory.snapshot(scope="src")
    store.fail = True
    operations = {
        "write": lambda: memory.write([{"role": "user", "content": "second"}], scope="s"),
        "reset": lambda: memory.reset(scope="s"),
        "forget": lambda: memory.forget(0, scope="s"),
        "fork": lambda: memory.fork("src", "s"),
        "restore": lambda: memory.restore(snapshot, scope="s"),
    }
    for name, operation in operations.items():
        with pytest.raises(sqlite3.OperationalError):
            operation()
        assert store.get(DEFAULT_NAMESPACE, "s").value == stored, name
        assert memory.export(scope="s") == held, f"{name}: the scope moved ahead of the store"
