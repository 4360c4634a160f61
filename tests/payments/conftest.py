"""The payment tests run on the in-process chain (eth-tester, py-evm) with the escrow on.

The chain lives as long as the test process while each test's database rolls back, so the
contracts are deployed once (`chain_deploy`'s own code) and every test starts from a
snapshot of the chain taken right after, with the deployment's rows recorded again."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from web3 import Web3

from marketplace.chain import client, deploy
from marketplace.models import ChainAccount, ChainContract, ChainCursor, ChainTransaction
from marketplace.services.wallets import dev_wallets

MINT = Decimal("5000")


@dataclass
class _Deployment:
    genesis: bytes          # before the contracts (for chain_deploy's own tests)
    snapshot: bytes         # right after them
    contracts: list[tuple[str, str, int]]


_deployment: _Deployment | None = None


@pytest.fixture
def escrow_on(settings):
    settings.ESCROW_ENABLED = True
    settings.CHAIN_RPC_URL = ""
    settings.CHAIN_LOG_RANGE = 2000
    settings.CHAIN_CONFIRMATIONS = 1


def tester():
    return client.w3().provider.ethereum_tester


@pytest.fixture
def chain(escrow_on, db):
    """The in-process chain with tUSD and JobEscrow deployed; returns the contracts."""
    global _deployment
    if _deployment is None:
        genesis = tester().take_snapshot()
        deploy.deploy()
        rows = [(c.name, c.address, c.block_number) for c in ChainContract.objects.all()]
        _deployment = _Deployment(genesis=genesis, snapshot=tester().take_snapshot(), contracts=rows)
    else:
        tester().revert_to_snapshot(_deployment.snapshot)
        for name, address, block in _deployment.contracts:
            ChainContract.objects.update_or_create(chain_id=client.chain_id(), name=name, defaults={
                "address": address, "block_number": block})
    return Chain()


@pytest.fixture
def bare_chain(escrow_on, db, chain):
    """The in-process chain as it was before anything was deployed, with nothing recorded."""
    tester().revert_to_snapshot(_deployment.genesis)
    # Nothing recorded: the first test's deployment (this test's transaction) goes too, or
    # the platform would rightly take this chain for one that lost its history.
    for model in (ChainContract, ChainTransaction, ChainAccount, ChainCursor):
        model.objects.all().delete()
    return Chain()


class Chain:
    """Reading the chain in tests (through the platform's own contract objects)."""

    @property
    def w3(self) -> Web3:
        return client.w3()

    @property
    def escrow(self):
        return deploy.escrow_contract()

    @property
    def token(self):
        return deploy.token_contract()

    def owed(self, address: str) -> int:
        return self.escrow.functions.owed(address).call()

    def balance(self, address: str) -> int:
        return self.token.functions.balanceOf(address).call()

    def escrow_of(self, key: str) -> tuple:
        return tuple(self.escrow.functions.escrows(bytes.fromhex(key[2:])).call())

    def now(self) -> int:
        return self.w3.eth.get_block("pending")["timestamp"]

    def travel_to(self, timestamp: int) -> None:
        tester().time_travel(timestamp)

    def transact(self, sender: str, call) -> dict:
        """An eth-tester account sends a contract call; returns the receipt."""
        tx_hash = call.transact({"from": sender, "gas": 3_000_000})
        return self.w3.eth.get_transaction_receipt(tx_hash)


@pytest.fixture
def wallets(chain, alice, bob, carol, dave):
    """Custodial development wallets for every organization (gas; consumers hold MINT tUSD)."""
    dev_wallets(mint=MINT)
    return chain
