"""Child side of ``test_multiprocess_writes``: a zygote that forks K writers of one scope.

Run as ``python tests/multiwriter_worker.py``. It builds the tiny engine once, prints ``ready``,
then answers one command per line on stdin:

``round <sqlite|postgres> <target> <k> <m> <lock|nolock> <dir>`` → ``done <exit statuses>``

It forks ``k`` writers. Each opens its own store connection (nothing of a database crosses the
fork) and a `DeltaMemory` on it, creates ``<dir>/ready-<i>``, waits for ``<dir>/go`` (created
once all are ready, so their writes overlap), then writes ``m`` turns into scope ``shared``.
Every write lingers ``PAUSE`` seconds after computing its state and before storing it, so that
without a cross-process lock (``nolock``, the control) the writers' turns do collide.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCOPE = "shared"
PAUSE = 0.05


def turn(writer: int, step: int) -> list[dict[str, str]]:
    """The ``step``-th turn of writer ``writer`` (unique text, so the log shows whose it is)."""
    return [
        {
            "role": "user",
            "content": f"Writer {writer}, turn {step}: my code is {writer}{step:03d}.",
            "source": "user",
        },
        {"role": "assistant", "content": "Noted.", "source": "assistant"},
    ]


def open_store(kind: str, target: str) -> Any:
    """A store on its own new connection (``setup`` is the test's job, done once)."""
    if kind == "sqlite":
        import sqlite3

        from langgraph.store.sqlite import SqliteStore

        conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=60)
        return SqliteStore(conn)
    import psycopg
    from langgraph.store.postgres import PostgresStore
    from psycopg.rows import dict_row

    conn = psycopg.connect(target, autocommit=True, prepare_threshold=0, row_factory=dict_row)
    return PostgresStore(conn)


def write_turns(engine: Any, kind: str, target: str, writer: int, m: int, lock: bool, run: Path):
    from langchain_deltamem.memory import DeltaMemory
    from langchain_deltamem.store_locks import InProcessLock

    memory = DeltaMemory(engine, store=open_store(kind, target))
    if not lock:
        memory._store_lock = InProcessLock()  # the control: no cross-process lock
    compute = memory._write_into

    def slow_write(state: Any, messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        written = compute(state, messages, *args, **kwargs)
        time.sleep(PAUSE)  # between computing the state and storing it
        return written

    memory._write_into = slow_write  # type: ignore[method-assign]
    (run / f"ready-{writer}").touch()
    while not (run / "go").exists():
        time.sleep(0.005)
    for step in range(m):
        memory.write(turn(writer, step), scope=SCOPE)


def zygote() -> None:
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout's package, not an installed one
    import torch
    from reliability_support import build_tiny_engine

    from langchain_deltamem.backbones import load_backbone

    torch.set_num_threads(1)
    engine = build_tiny_engine(load_backbone()[1])
    print("ready", flush=True)
    for line in sys.stdin:
        command, kind, target, k, m, lock, folder = line.split()
        assert command == "round", command
        run = Path(folder)
        pids = []
        for writer in range(int(k)):
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    write_turns(engine, kind, target, writer, int(m), lock == "lock", run)
                    code = 0
                except BaseException as err:
                    (run / f"error-{writer}").write_text(f"{type(err).__name__}: {err}")
                finally:
                    os._exit(code)
            pids.append(pid)
        deadline = time.monotonic() + 120
        while len(list(run.glob("ready-*"))) + len(list(run.glob("error-*"))) < int(k):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        (run / "go").touch()
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
        print("done " + " ".join(map(str, statuses)), flush=True)


if __name__ == "__main__":
    zygote()
