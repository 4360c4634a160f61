"""The contracts on an in-process chain (eth-tester + py-evm, prague rules), deployed once per
session from the committed artifacts; every test starts from a snapshot taken right after
deployment. Actors (STYLE.md): alice and bob consumers (each minted 1,000,000 tUSD with the
escrow approved for all of it), carol and dave providers, mallory a stranger, plus the admin
(pauser), the operator and the treasury."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import pytest
from eth_abi import decode
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from .support import TX_GAS, USD, Deployment, deploy_escrow, error_selector, load_artifact

MINTED = 1_000_000 * USD
DAY = 86_400
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The suite-wide autouse fixture clears Django's cache (Redis); these tests use neither."""
    yield


def revert_data(exc: BaseException) -> bytes:
    """The raw revert data of a failed call: web3 keeps it on ContractLogicError (custom
    errors from a JSON-RPC node, panics); eth-tester's TransactionFailed only has it as the
    bytes literal in its message."""
    if isinstance(exc, ContractLogicError) and exc.data:
        return bytes.fromhex(str(exc.data).removeprefix("0x"))
    message = str(exc.args[0]) if exc.args else ""
    prefix = "execution reverted: "
    if not message.startswith(prefix):
        raise AssertionError(f"not a revert with data: {exc!r}")
    return ast.literal_eval(message[len(prefix):])


def decode_error(contract_name: str, data: bytes) -> tuple[str, tuple]:
    """(name, args) of the custom error that `data` encodes."""
    for item in load_artifact(contract_name)["abi"]:
        if item["type"] == "error" and error_selector(contract_name, item["name"]) == "0x" + data[:4].hex():
            types = [i["type"] for i in item["inputs"]]
            values = decode(types, data[4:])
            return item["name"], tuple(Web3.to_checksum_address(v) if t == "address" else v
                                       for t, v in zip(types, values, strict=True))
    raise AssertionError(f"unknown revert data {data.hex()}")


@dataclass
class Chain(Deployment):
    alice: str
    bob: str
    carol: str
    dave: str
    mallory: str

    @property
    def tester(self):
        return self.w3.provider.ethereum_tester

    def send(self, fn, sender: str) -> dict:
        """Sends and mines a transaction that must succeed; returns its receipt."""
        receipt = self.w3.eth.get_transaction_receipt(fn.transact({"from": sender, "gas": TX_GAS}))
        assert receipt["status"] == 1, f"{fn.fn_name} reverted"
        return receipt

    def reverts(self, fn, sender: str, error: str, *args, contract: str = "JobEscrow") -> None:
        """Asserts that `fn` from `sender` reverts with custom error `error` (and, when given,
        exactly these arguments), both as a call and as a mined transaction. The call runs on
        the pending block, so it sees the timestamp that the transaction will."""
        with pytest.raises(Exception) as excinfo:
            fn.call({"from": sender}, block_identifier="pending")
        name, got = decode_error(contract, revert_data(excinfo.value))
        assert name == error, f"reverted with {name}{got}, expected {error}"
        if args:
            assert got == args, f"{error} arguments {got} != {args}"
        receipt = self.w3.eth.get_transaction_receipt(fn.transact({"from": sender, "gas": TX_GAS}))
        assert receipt["status"] == 0

    def panics(self, fn, sender: str, code: int) -> None:
        """Asserts that `fn` fails with Solidity's Panic(code) (0x11: arithmetic overflow)."""
        with pytest.raises(Exception) as excinfo:
            fn.call({"from": sender}, block_identifier="pending")
        data = revert_data(excinfo.value)
        assert data[:4] == PANIC_SELECTOR and decode(["uint256"], data[4:]) == (code,), data.hex()

    def events(self, receipt: dict, name: str, contract: Contract | None = None) -> list[dict]:
        event = getattr((contract or self.escrow).events, name)()
        return [dict(e["args"]) for e in event.process_receipt(receipt, errors=DISCARD)]

    def now(self) -> int:
        """The timestamp that the next transaction's block will carry."""
        return self.w3.eth.get_block("pending")["timestamp"]

    def travel_to(self, timestamp: int) -> None:
        """The next transaction runs at exactly `timestamp` (eth-tester mines a block at
        `timestamp - 1` and leaves the pending block at `timestamp`)."""
        self.tester.time_travel(timestamp)
        assert self.now() == timestamp

    def state(self):
        """py-evm's state after the latest block, for `storage` (eth-tester's own
        get_storage_at rebuilds it on every read and is ten times slower)."""
        return self.tester.backend.chain.get_vm().state

    def storage(self, contract: Contract, variable: str, *keys, member: int = 0, state=None) -> int:
        """A state variable (for a mapping: the entry at `keys`; for a struct: its `member`-th
        slot) read straight from the chain's state: a fraction of a millisecond, where an
        eth_call runs the EVM for several. Slots come from the artifact's storage layout."""
        name = "TestUSD" if contract.address == self.token.address else "JobEscrow"
        slot = next(v["slot"] for v in load_artifact(name)["storage"] if v["label"] == variable)
        for key in keys:
            word = bytes.fromhex(key.removeprefix("0x")) if isinstance(key, str) else bytes(key)
            slot = int.from_bytes(Web3.keccak(word.rjust(32, b"\0") + slot.to_bytes(32, "big")), "big")
        return (state or self.state()).get_storage(bytes.fromhex(contract.address[2:]), slot + member)

    def balance(self, account: str) -> int:
        return self.token.functions.balanceOf(account).call()

    def escrow_of(self, job_id: bytes) -> tuple:
        return tuple(self.escrow.functions.escrows(job_id).call())

    def owed(self, account: str) -> int:
        return self.escrow.functions.owed(account).call()

    def fund(self, job_id: bytes, amount: int, *, consumer: str | None = None,
             deadline: int | None = None) -> dict:
        """`consumer` (alice) funds on terms the operator signed for it."""
        deadline = deadline if deadline is not None else self.now() + DAY
        consumer = consumer or self.alice
        return self.send(self.fund_call(job_id, consumer, amount, deadline), consumer)

    def settle(self, job_id: bytes, payouts: list[tuple[str, int]], fee: int) -> dict:
        return self.send(self.escrow.functions.settle(settlement(job_id, payouts, fee)), self.operator)


def settlement(job_id: bytes, payouts: list[tuple[str, int]], fee: int) -> tuple:
    """A Settlement struct as web3 encodes it: (jobId, providers, amounts, fee)."""
    return (job_id, [p for p, _ in payouts], [a for _, a in payouts], fee)


def job(n: int) -> bytes:
    """A distinct 32-byte job id."""
    return Web3.keccak(text=f"job-{n}")


@pytest.fixture(scope="session")
def _deployed() -> tuple[Chain, int]:
    w3 = Web3(EthereumTesterProvider())
    admin, operator, treasury, alice, bob, carol, dave, mallory = w3.eth.accounts[:8]
    d = deploy_escrow(w3, admin=admin, operator=operator, treasury=treasury)
    chain = Chain(**vars(d), alice=alice, bob=bob, carol=carol, dave=dave, mallory=mallory)
    for consumer in (alice, bob):
        chain.send(d.token.functions.mint(consumer, MINTED), admin)
        chain.send(d.token.functions.approve(d.escrow.address, MINTED), consumer)
    return chain, chain.tester.take_snapshot()


@pytest.fixture
def chain(_deployed) -> Chain:
    chain, snapshot = _deployed
    chain.tester.revert_to_snapshot(snapshot)
    return chain
