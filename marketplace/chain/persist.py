"""The embedded demo's chain on disk: py-evm's key-value database in one SQLite file, so that
escrows funded in a demo survive a restart of `make demo`.

py-evm writes the state trie, blocks and the canonical head as key-value pairs. Writes are
buffered in memory and committed in one SQLite transaction per JSON-RPC call (eth-tester
mines a block per transaction), under the chain's lock: a process killed mid-call leaves
the file at the end of the previous call, never half a block. On start the chain reopens
at its stored head; a folder with no chain gets a new genesis.
"""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path

from eth.chains.base import MiningChain
from eth.db.atomic import AtomicDB
from eth.db.backends.base import BaseDB
from eth.db.chain import ChainDB
from eth.exceptions import CanonicalHeadNotFound
from eth.vm.forks import PragueVM
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import (
    generate_genesis_state_for_keys,
    get_default_account_keys,
    get_default_genesis_params,
)
from eth_utils.toolz import assoc

from .client import _LockedTesterProvider

_DELETED = None


class SqliteDB(BaseDB):
    """A key-value store in one SQLite table; nothing is written before `commit()`."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # WAL + synchronous=NORMAL: a commit is atomic and survives a killed process (the
        # demo's case); only an OS crash may lose the last commits, never half of one.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) "
                           "WITHOUT ROWID")
        self._pending: dict[bytes, bytes | None] = {}

    def __getitem__(self, key: bytes) -> bytes:
        if key in self._pending:
            value = self._pending[key]
            if value is _DELETED:
                raise KeyError(key)
            return value
        row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self._pending[key] = _DELETED

    def _exists(self, key: bytes) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def commit(self) -> int:
        """Write what is pending in one transaction; returns how many keys."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        with self._conn:  # BEGIN … COMMIT, or ROLLBACK on an error
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                                   [(k, v) for k, v in pending.items() if v is not _DELETED])
            self._conn.executemany("DELETE FROM kv WHERE k = ?",
                                   [(k,) for k, v in pending.items() if v is _DELETED])
        return len(pending)

    def close(self) -> None:
        self._pending.clear()
        self._conn.close()


class DevChain(MiningChain):
    """eth-tester's own chain (its chain id, Prague rules, a constant gas limit), so that a
    persisted chain answers exactly like the in-memory one."""

    chain_id = 131277322940537
    vm_configuration = ((0, PragueVM),)

    def create_header_from_parent(self, parent_header, **header_params):
        return super().create_header_from_parent(
            parent_header, **assoc(header_params, "gas_limit", parent_header.gas_limit))

    def get_transaction_builder(self):
        return super().get_vm().get_transaction_builder()


class PersistentBackend(PyEVMBackend):
    """eth-tester's py-evm backend over a SqliteDB: reopened at its stored head."""

    def __init__(self, store: SqliteDB) -> None:
        self.store = store
        super().__init__()

    def reset_to_genesis(self, genesis_params=None, genesis_state=None, num_accounts=None,
                         vm_configuration=None, mnemonic=None, hd_path=None):
        # The same ten funded test accounts as the in-memory chain: their keys are fixed.
        self.account_keys = get_default_account_keys(quantity=num_accounts)
        db = AtomicDB(self.store)
        try:
            ChainDB(db).get_canonical_head()
        except CanonicalHeadNotFound:
            self.chain = DevChain.from_genesis(db, get_default_genesis_params(),
                                               generate_genesis_state_for_keys(self.account_keys))
            self.store.commit()
        else:
            self.chain = DevChain(db)


class PersistentTesterProvider(_LockedTesterProvider):
    """The in-process chain kept in `folder` (chain.sqlite3), one commit per call. The folder
    is locked: a second process opening it would fork the chain."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(folder / "chain.lock", "w")  # noqa: SIM115 (held for the provider's life)
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise RuntimeError(f"Another process has the chain in {folder} open.") from None
        self.store = SqliteDB(folder / "chain.sqlite3")
        with self._lock:
            super().__init__(ethereum_tester=EthereumTester(backend=PersistentBackend(self.store)))

    def make_request(self, method, params):
        with self._lock:
            try:
                return super().make_request(method, params)
            finally:
                # Even after an error: what py-evm wrote is what the in-memory chain would keep.
                self.store.commit()

    def close(self) -> None:
        with self._lock:
            self.store.commit()
            self.store.close()
            self._lockfile.close()  # releases the lock
