"""Cross-process locks per memory scope, for the stores `DeltaMemory` persists in.

A write to a scope reads its record, runs the model over the new messages and stores the result.
Two processes doing that at once on one scope would each store their own result, and one write
would be lost. So every change of a scope runs under this lock (taken after the in-process
per-scope lock), re-reads the record once it holds it, and stores before letting go:

* PostgreSQL (`PostgresStore`, `AsyncPostgresStore`): a session-level advisory lock on the
  server. It is polled with ``pg_try_advisory_lock``: a waiting process never blocks the
  connection its other scopes share. The server drops it when the holder's connection dies.
* SQLite (`SqliteStore` on a file): an ``flock`` on one lock file per scope, in a folder next
  to the database. The kernel drops it when the holder dies.
* Stores that live in one process (`InMemoryStore`, an in-memory SQLite database): the
  in-process lock is enough.

Any other store gets a warning: its scopes are safe within one process only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock
from filelock import Timeout as FileLockTimeout
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

LOCK_TIMEOUT = 600.0  # seconds a change waits for another process's write to the same scope
_POLL_FIRST, _POLL_MAX = 0.005, 0.05  # seconds between tries of a held advisory lock


class ScopeLockTimeout(TimeoutError):
    """Another process held a scope longer than the lock timeout."""


class ScopeLock(Protocol):
    """Excludes other processes from one scope while the caller changes it."""

    def hold(self, namespace: tuple[str, ...], scope: str) -> AbstractContextManager[None]: ...


def lock_digest(namespace: tuple[str, ...], scope: str) -> bytes:
    """A stable 32-byte name of (namespace, scope), the same in every process."""
    return hashlib.sha256(json.dumps(["deltamem", list(namespace), scope]).encode()).digest()


def advisory_key(namespace: tuple[str, ...], scope: str) -> int:
    """The signed 64-bit key of the scope's PostgreSQL advisory lock."""
    return int.from_bytes(lock_digest(namespace, scope)[:8], "big", signed=True)


class InProcessLock:
    """For stores only this process reaches: the in-process scope lock already serialises."""

    def hold(self, namespace: tuple[str, ...], scope: str) -> AbstractContextManager[None]:
        return nullcontext()


class FileScopeLock:
    """One ``flock``ed file per scope in ``directory`` (processes on one machine)."""

    def __init__(self, directory: Path, timeout: float = LOCK_TIMEOUT) -> None:
        self.directory = directory
        self.timeout = timeout

    @contextmanager
    def hold(self, namespace: tuple[str, ...], scope: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{lock_digest(namespace, scope).hex()[:32]}.lock"
        lock = FileLock(str(path), timeout=self.timeout, thread_local=False)
        try:
            lock.acquire()
        except FileLockTimeout as err:
            raise _timeout(scope, self.timeout) from err
        try:
            yield
        finally:
            lock.release()


class PostgresScopeLock:
    """A session advisory lock on the `PostgresStore`'s server (its connection or pool)."""

    def __init__(self, store: Any, timeout: float = LOCK_TIMEOUT) -> None:
        self.store = store
        self.timeout = timeout

    @contextmanager
    def hold(self, namespace: tuple[str, ...], scope: str) -> Iterator[None]:
        from psycopg.rows import tuple_row
        from psycopg_pool import ConnectionPool

        key = advisory_key(namespace, scope)
        pool = self.store.conn if isinstance(self.store.conn, ConnectionPool) else None
        conn = pool.getconn() if pool is not None else self.store.conn  # kept while held

        # one shared connection: the store's own lock keeps our statements out of its batches
        shared = self.store.lock if pool is None else nullcontext()

        def call(query: str) -> bool:
            with shared, conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(query, (key,))
                row = cur.fetchone()
            return bool(row and row[0])

        try:
            _poll(lambda: call("SELECT pg_try_advisory_lock(%s)"), scope, self.timeout)
            try:
                yield
            finally:
                call("SELECT pg_advisory_unlock(%s)")
        finally:
            if pool is not None:
                pool.putconn(conn)


class AsyncPostgresScopeLock:
    """The advisory lock of `PostgresScopeLock`, run on an `AsyncPostgresStore`'s event loop.

    `DeltaMemory` is synchronous (its writes are forward passes): with an async store it runs
    in a worker thread (its ``a*`` methods do that) and this lock's statements go to the loop.
    """

    def __init__(self, store: Any, timeout: float = LOCK_TIMEOUT) -> None:
        self.store = store
        self.timeout = timeout

    @contextmanager
    def hold(self, namespace: tuple[str, ...], scope: str) -> Iterator[None]:
        from psycopg.rows import tuple_row
        from psycopg_pool import AsyncConnectionPool

        loop: asyncio.AbstractEventLoop = self.store.loop
        if _running_loop() is loop:
            raise RuntimeError(
                "DeltaMemory with an AsyncPostgresStore was called synchronously on the store's "
                "event loop: use its async methods (awrite, aexport, …) instead"
            )
        key = advisory_key(namespace, scope)
        pool = self.store.conn if isinstance(self.store.conn, AsyncConnectionPool) else None

        async def call(conn: Any, query: str) -> bool:
            # one shared connection: statements sent while the store's batch runs on it fail
            # ("another command is already in progress"), so take the store's own lock
            async with (
                self.store.lock if pool is None else nullcontext(),
                conn.cursor(row_factory=tuple_row) as cur,
            ):
                await cur.execute(query, (key,))
                row = await cur.fetchone()
            return bool(row and row[0])

        async def acquire() -> Any:
            conn = await pool.getconn() if pool is not None else self.store.conn
            deadline, pause = time.monotonic() + self.timeout, _POLL_FIRST
            try:
                while not await call(conn, "SELECT pg_try_advisory_lock(%s)"):
                    if time.monotonic() > deadline:
                        raise _timeout(scope, self.timeout)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _POLL_MAX)
            except BaseException:
                if pool is not None:
                    await pool.putconn(conn)
                raise
            return conn

        async def release(conn: Any) -> None:
            try:
                await call(conn, "SELECT pg_advisory_unlock(%s)")
            finally:
                if pool is not None:
                    await pool.putconn(conn)

        conn = asyncio.run_coroutine_threadsafe(acquire(), loop).result()
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(release(conn), loop).result()


def scope_lock_for(store: BaseStore | None) -> ScopeLock:
    """The lock that keeps the scopes of ``store`` consistent across processes."""
    if store is None or isinstance(store, InMemoryStore):
        return InProcessLock()
    postgres = sys.modules.get("langgraph.store.postgres")  # loaded if store is one of its
    if postgres is not None:
        if isinstance(store, postgres.AsyncPostgresStore):
            return AsyncPostgresScopeLock(store)
        if isinstance(store, postgres.PostgresStore):
            return PostgresScopeLock(store)
    sqlite = sys.modules.get("langgraph.store.sqlite")
    if sqlite is not None and isinstance(store, sqlite.SqliteStore):
        with store.lock:
            rows = store.conn.execute("PRAGMA database_list").fetchall()
        path = next((row[2] for row in rows if row[1] == "main"), "")
        if not path:  # an in-memory database: one process only
            return InProcessLock()
        return FileScopeLock(Path(path + ".deltamem-locks"))
    warnings.warn(
        f"DeltaMemory cannot lock scopes across processes in a {type(store).__name__}: two "
        "processes writing one scope at once may lose a write (PostgresStore, SqliteStore and "
        "InMemoryStore are supported)",
        stacklevel=3,
    )
    return InProcessLock()


def _poll(try_once: Callable[[], bool], scope: str, timeout: float) -> None:
    deadline, pause = time.monotonic() + timeout, _POLL_FIRST
    while not try_once():
        if time.monotonic() > deadline:
            raise _timeout(scope, timeout)
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MAX)


def _timeout(scope: str, timeout: float) -> ScopeLockTimeout:
    return ScopeLockTimeout(
        f"scope {scope!r} stayed locked by another process for more than {timeout:g} s"
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
