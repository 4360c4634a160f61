"""Opening the chain and its contracts."""

import json
import threading
from functools import cache
from pathlib import Path

from django.conf import settings
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider

from ..errors import MarketError

ARTIFACTS = Path(settings.BASE_DIR) / "contracts" / "artifacts"


class ChainError(MarketError):
    """The chain refused or could not be reached; nothing was lost (see the message)."""

    status_code = 503

    def __init__(self, message: str, *, code: str = "chain_error"):
        super().__init__(message, code=code)
        if code == "reverted":  # the chain answered, and refused: a conflict, not an outage
            self.status_code = 409


class _LockedTesterProvider(EthereumTesterProvider):
    """py-evm is not thread-safe; daphne's and Django's threads share one chain."""

    _lock = threading.RLock()

    def make_request(self, method, params):
        with self._lock:
            return super().make_request(method, params)


@cache
def _in_process() -> Web3:
    return Web3(_LockedTesterProvider())


def w3() -> Web3:
    """The chain: the JSON-RPC node at CHAIN_RPC_URL, or this process's in-process EVM."""
    if settings.CHAIN_RPC_URL:
        return _http(settings.CHAIN_RPC_URL)
    return _in_process()


@cache
def _http(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": settings.CHAIN_RPC_TIMEOUT_S}))


def is_in_process() -> bool:
    return not settings.CHAIN_RPC_URL


@cache
def artifact(name: str) -> dict:
    return json.loads((ARTIFACTS / f"{name}.json").read_text())


def contract(name: str, address: str | None = None):
    spec = artifact(name)
    if address is None:
        return w3().eth.contract(abi=spec["abi"], bytecode=spec["bytecode"])
    return w3().eth.contract(address=Web3.to_checksum_address(address), abi=spec["abi"])


def chain_id() -> int:
    try:
        return w3().eth.chain_id
    except Exception as exc:  # connection refused, timeouts, a node answering garbage
        raise unavailable(exc) from exc


def unavailable(exc: Exception) -> ChainError:
    """The error for a node that did not answer (connection refused, timeouts, garbage)."""
    return ChainError(f"The chain node does not answer: {short_error(exc)}", code="chain_unavailable")


def short_error(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
