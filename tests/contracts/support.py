"""Deploying the committed contract artifacts with web3.py, for the contract tests and
bench/gas.py. The platform's chain layer (marketplace/chain/) loads the same JSON files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from eth_utils import function_signature_to_4byte_selector
from web3 import Web3
from web3.contract import Contract

from marketplace.chain.terms import sign_fund_terms

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "contracts" / "artifacts"

# Job states as JobEscrow.State numbers them.
NONE, FUNDED, SETTLED, REFUNDED = 0, 1, 2, 3
USD = 10**6  # tUSD has 6 decimals
TX_GAS = 3_000_000  # explicit gas skips an estimate round trip per transaction


@cache
def load_artifact(name: str) -> dict:
    """`contracts/artifacts/<name>.json`: abi, bytecode, deployedBytecode, compiler."""
    return json.loads((ARTIFACTS / f"{name}.json").read_text())


def deploy(w3: Web3, name: str, *args, sender: str) -> Contract:
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx_hash = factory.constructor(*args).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1, f"deploying {name} failed"
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])


@dataclass
class Deployment:
    w3: Web3
    token: Contract
    escrow: Contract
    admin: str
    operator: str
    treasury: str
    operator_key: str  # signs the funding terms (FundTerms, EIP-712)

    def terms(self, job_id: bytes, consumer: str, amount: int, deadline: int, *,
              key: str | None = None) -> bytes:
        """A signature of FundTerms(job_id, consumer, amount, deadline): the operator's
        unless another `key` signs."""
        return sign_fund_terms(key=key or self.operator_key, chain_id=self.w3.eth.chain_id,
                               escrow=self.escrow.address, job_id=job_id, consumer=consumer,
                               amount=amount, deadline=deadline)

    def fund_call(self, job_id: bytes, consumer: str, amount: int, deadline: int, *,
                  signature: bytes | None = None):
        """`fund` as `consumer` sends it, with the operator's signature of exactly these terms
        unless `signature` is given."""
        return self.escrow.functions.fund(job_id, amount, deadline,
                                          self.terms(job_id, consumer, amount, deadline)
                                          if signature is None else signature)


def account_key(w3: Web3, address: str, keys: dict[str, str] | None = None) -> str:
    """The private key of one of the chain's own accounts: eth-tester's, or `keys` (a JSON-RPC
    node's well-known development accounts)."""
    if keys is not None:
        return keys[address]
    backend = w3.provider.ethereum_tester.backend
    return str(backend.account_keys[w3.eth.accounts.index(address)])


def deploy_escrow(w3: Web3, *, admin: str, operator: str, treasury: str, pauser: str | None = None,
                  keys: dict[str, str] | None = None) -> Deployment:
    """TestUSD (admin mints) and a JobEscrow on it (admin administers, `pauser` pauses, by
    default the admin too; the operator signs terms and settles)."""
    token = deploy(w3, "TestUSD", admin, sender=admin)
    escrow = deploy(w3, "JobEscrow", token.address, treasury, admin, pauser or admin, operator,
                    sender=admin)
    return Deployment(w3=w3, token=token, escrow=escrow, admin=admin, operator=operator,
                      treasury=treasury, operator_key=account_key(w3, operator, keys))


def error_selector(contract_name: str, error_name: str) -> str:
    """The 4-byte selector (0x…) of a custom error declared in the contract's ABI."""
    for item in load_artifact(contract_name)["abi"]:
        if item["type"] == "error" and item["name"] == error_name:
            types = ",".join(i["type"] for i in item["inputs"])
            return "0x" + function_signature_to_4byte_selector(f"{error_name}({types})").hex()
    raise KeyError(f"{contract_name} declares no error {error_name}")


WITHDRAW_DELAY = 7 * 86_400  # the stake tests' delay (the platform's comes from settings)


def deploy_stake(w3: Web3, d: Deployment, *, delay: int = WITHDRAW_DELAY) -> Contract:
    """A ProviderStake on the deployment's token (admin pauses, operator slashes)."""
    return deploy(w3, "ProviderStake", d.token.address, d.treasury, d.admin, d.operator, delay,
                  sender=d.admin)
