"""The stake contract on the contract tests' chain: deployed once over the escrow's
deployment, carol and dave (providers) minted tUSD with the stake approved for all of it."""

from __future__ import annotations

from web3 import Web3

from .conftest import Chain
from .support import USD, deploy_stake

PROVIDER_MINT = 10_000 * USD
ZERO = "0x" + "00" * 20


def dispute(n: int) -> bytes:
    return Web3.keccak(text=f"dispute-{n}")


def prepare(chain: Chain, snapshot: int):
    """Returns (stake contract, snapshot after its deployment)."""
    chain.tester.revert_to_snapshot(snapshot)
    stake = deploy_stake(chain.w3, chain)
    for provider in (chain.carol, chain.dave):
        chain.send(chain.token.functions.mint(provider, PROVIDER_MINT), chain.admin)
        chain.send(chain.token.functions.approve(stake.address, PROVIDER_MINT), provider)
    return stake, chain.tester.take_snapshot()
