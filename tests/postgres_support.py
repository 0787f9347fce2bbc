"""A throwaway PostgreSQL database per test module, on the machine's server.

The server is found at ``DELTAMEM_TEST_POSTGRES`` (a libpq URL of a database to connect to for
creating others; default: the local cluster's ``postgres`` database over TCP). Each fixture
creates a database with a random name and drops it afterwards. Without a reachable server the
tests fail in CI (``CI`` set, as ``.ci/run`` runs) and are skipped elsewhere, with a message that
says how to start one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get(
    "DELTAMEM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
HOW_TO_START = (
    "start PostgreSQL (Debian: pg_ctlcluster --skip-systemctl-redirect "
    "$(ls /etc/postgresql) main start) or point DELTAMEM_TEST_POSTGRES at a server"
)


def _unavailable(reason: str, *, module_level: bool = False) -> NoReturn:
    message = f"PostgreSQL tests need a server at {ADMIN_URL} ({reason}): {HOW_TO_START}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=module_level)


def import_postgres() -> Any:
    """psycopg, or (at module level) a skip here and a failure in CI without the extra."""
    try:
        import langgraph.checkpoint.postgres
        import langgraph.store.postgres  # noqa: F401
        import psycopg
    except ImportError as err:
        _unavailable(f"{err}; pip install 'langchain-deltamem[postgres]'", module_level=True)
    return psycopg


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` (a ``postgresql://`` URL) with its database replaced by ``name``."""
    parts = urlsplit(admin_url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DELTAMEM_TEST_POSTGRES must be a postgresql:// URL, got {admin_url!r}")
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def temporary_database(prefix: str = "deltamem_test") -> Iterator[str]:
    """A new empty database; yields its URL and drops it (and its connections) afterwards."""
    psycopg = import_postgres()
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        _unavailable(str(err).strip().splitlines()[0])
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield database_url(ADMIN_URL, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
