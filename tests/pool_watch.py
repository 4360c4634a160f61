"""Connections of this process's database pool that a test leaves checked out.

Django's pool (psycopg_pool, max DATABASE_POOL_MAX) never gets back a connection whose thread
ended without closing it. One full run ran out late (PoolTimeout in a test that needed two
threads' connections, 1,902 passed, 82 % through): channels.testing's communicators had
turned off the consumers' closing of their threads' connections (fixed in conftest.py,
_consumers_return_their_connections). The tests after which more connections stay out than
before are named at the end of the run, so that a new leak is found at once."""

import pytest

_state: dict = {"in_use": 0, "grew": []}


def _out_elsewhere() -> int | None:
    """Connections checked out of the pool by threads other than this one (None: no pool)."""
    try:
        from django.db import DEFAULT_DB_ALIAS, connections

        wrapper = connections[DEFAULT_DB_ALIAS]
    except Exception:  # noqa: BLE001 - Django not set up: nothing to watch
        return None
    pools = getattr(type(wrapper), "_connection_pools", None)
    pool = pools.get(DEFAULT_DB_ALIAS) if pools else None
    if pool is None:
        return None
    stats = pool.get_stats()
    return stats.get("pool_size", 0) - stats.get("pool_available", 0) - (wrapper.connection is not None)


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    in_use = _out_elsewhere()
    if in_use is None:
        return
    if in_use > _state["in_use"]:
        _state["grew"].append((nodeid, _state["in_use"], in_use))
    _state["in_use"] = in_use


def pytest_terminal_summary(terminalreporter):
    if _state["grew"]:
        terminalreporter.section("database pool: connections left checked out")
        for nodeid, before, after in _state["grew"]:
            terminalreporter.write_line(f"{before} -> {after}  after {nodeid}")
