"""Gas of the escrow's hot paths on the in-process EVM (eth-tester / py-evm, prague rules):
`fund`, a single-job `settle`, and `settleBatch` per job for batches of 1, 10, 50 and 100.

    .venv/bin/python bench/gas.py [--sizes 1,10,50,100] [--smoke]

Baseline, in the same run: a plain transfer of the same token (what moving the money costs
without the escrow). `--smoke` (what `make test` runs) measures batches of 1 only.

Gas is deterministic, so one transaction per case is enough (every fund row is the mean of
20, which differ by nothing but calldata bytes). Steady state: the escrow already holds
tokens and the treasury already has a credit, as on a chain that has been running; job ids
are random 32-byte values (keccak-like: every byte non-zero on average, the dearest calldata).

Batch cases, one provider per job, the same consumer throughout:
  repeat providers   3 providers reused, all credited before the batch;
  distinct new       a fresh address per job, never credited (each credit is a new slot).

`fund` carries the operator's EIP-712 signature of the terms (65 bytes of calldata, an
ecrecover and a role read): the terms the platform signs for the owner's wallet.

Targets (docs/BENCHMARKS.md): fund ≤ 110,000 (95,000 before the terms were bound); single
settlement ≤ 75,000; batches of ≥ 50 ≤ 15,000 per job with repeat providers and ≤ 30,000
with distinct new providers.

ProviderStake (no targets set; measured for docs/BENCHMARKS.md): a first and a further
stake, a withdrawal request, the withdrawal after the delay, and a slash to a consumer
(taking active stake only, and reaching into the stake pending withdrawal).
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _common import git_revision, machine, report, table  # noqa: E402
from web3 import EthereumTesterProvider, Web3  # noqa: E402

from tests.contracts.support import USD, deploy_escrow, deploy_stake, load_artifact  # noqa: E402

BATCH_GAS = 25_000_000
TARGETS = {"fund": 110_000, "settle": 75_000, "repeat": 15_000, "distinct": 30_000}


class Bench:
    def __init__(self) -> None:
        self.w3 = Web3(EthereumTesterProvider())
        accounts = self.w3.eth.accounts
        admin, operator, treasury = accounts[0], accounts[1], accounts[2]
        self.consumer, self.other, self.fresh_consumer = accounts[3], accounts[4], accounts[5]
        self.d = deploy_escrow(self.w3, admin=admin, operator=operator, treasury=treasury)
        self.operator = operator
        token, escrow = self.d.token, self.d.escrow
        for who in (self.consumer, self.other, self.fresh_consumer):
            self.send(token.functions.mint(who, 10**9 * USD), admin)
            # A large finite allowance: every fund also rewrites the allowance (dearer than
            # an unlimited one, which OpenZeppelin's ERC20 never decrements).
            self.send(token.functions.approve(escrow.address, 10**9 * USD), who)
        self.repeat_providers = [Web3.to_checksum_address(os.urandom(20)) for _ in range(3)]
        # Steady state: a token balance in the escrow, the treasury, the repeat providers and
        # the consumer already credited.
        warm = self.fund(self.other, 100 * USD)
        self.settle_one(warm, self.repeat_providers, [USD] * 3, fee=USD)
        warm = self.fund(self.consumer, 100 * USD)
        self.settle_one(warm, [self.repeat_providers[0]], [USD], fee=USD)

    def send(self, fn, sender: str, gas: int = 3_000_000) -> dict:
        tx_hash = fn.transact({"from": sender, "gas": gas})
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction reverted: {fn.fn_name}")
        return receipt

    def deadline(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"] + 86_400

    def fund(self, consumer: str, amount: int) -> bytes:
        job_id = os.urandom(32)
        self.last_receipt = self.send(self.d.fund_call(job_id, consumer, amount, self.deadline()), consumer)
        return job_id

    def settle_one(self, job_id: bytes, providers: list[str], amounts: list[int], fee: int) -> int:
        receipt = self.send(self.d.escrow.functions.settle((job_id, providers, amounts, fee)),
                            self.operator)
        return receipt["gasUsed"]

    def settle_batch(self, settlements: list[tuple]) -> int:
        receipt = self.send(self.d.escrow.functions.settleBatch(settlements), self.operator,
                            gas=BATCH_GAS)
        return receipt["gasUsed"]


def new_address() -> str:
    return Web3.to_checksum_address(os.urandom(20))


def measure(sizes: list[int]) -> tuple[list[list], list[list], list[list]]:
    b = Bench()
    fund_gas = []
    for _ in range(20):
        b.fund(b.consumer, 100 * USD)
        fund_gas.append(b.last_receipt["gasUsed"])
    fund_rows = [["fund (finite allowance, escrow already holds tokens)", round(sum(fund_gas) / 20),
                  TARGETS["fund"]]]
    b.send(b.d.token.functions.approve(b.d.escrow.address, 2**256 - 1), b.other)
    fund_gas = []
    for _ in range(20):
        b.fund(b.other, 100 * USD)
        fund_gas.append(b.last_receipt["gasUsed"])
    fund_rows.append(["fund (unlimited allowance)", round(sum(fund_gas) / 20), TARGETS["fund"]])

    p = b.repeat_providers
    settle_rows = []
    job = b.fund(b.consumer, 100 * USD)
    settle_rows.append(["repeat provider, consumer credited before",
                        b.settle_one(job, [p[0]], [60 * USD], 5 * USD)])
    job = b.fund(b.fresh_consumer, 100 * USD)
    settle_rows.append(["repeat provider, consumer with nothing owed",
                        b.settle_one(job, [p[0]], [60 * USD], 5 * USD)])
    job = b.fund(b.consumer, 100 * USD)
    settle_rows.append(["new provider, consumer credited before",
                        b.settle_one(job, [new_address()], [60 * USD], 5 * USD)])
    b.send(b.d.escrow.functions.withdrawFor(b.fresh_consumer), b.operator)
    job = b.fund(b.fresh_consumer, 100 * USD)
    settle_rows.append(["new provider, consumer with nothing owed",
                        b.settle_one(job, [new_address()], [60 * USD], 5 * USD)])
    job = b.fund(b.consumer, 100 * USD)
    settle_rows.append(["3 repeat providers, consumer credited before",
                        b.settle_one(job, p, [20 * USD] * 3, 5 * USD)])
    job = b.fund(b.consumer, 100 * USD)
    settle_rows.append(["budget spent exactly (no remainder), repeat provider",
                        b.settle_one(job, [p[0]], [95 * USD], 5 * USD)])
    for row in settle_rows:
        row.append(TARGETS["settle"])

    batch_rows = []
    for size in sizes:
        for case in ("repeat", "distinct"):
            settlements = []
            for i in range(size):
                job = b.fund(b.consumer, 100 * USD)
                provider = p[i % 3] if case == "repeat" else new_address()
                settlements.append((job, [provider], [60 * USD], 5 * USD))
            gas = b.settle_batch(settlements)
            target = TARGETS[case] if size >= 50 else ""
            label = "repeat providers (3 reused)" if case == "repeat" else "distinct new providers"
            batch_rows.append([label, size, gas, round(gas / size), target])
    return fund_rows, settle_rows, batch_rows


def token_transfer_gas() -> int:
    """A transfer of the settlement token between two accounts that already hold it."""
    b = Bench()
    return b.send(b.d.token.functions.transfer(b.other, USD), b.consumer)["gasUsed"]


def measure_stake() -> list[list]:
    """Gas of each ProviderStake operation, in a steady state (the contract and the
    consumer already hold tokens)."""
    b = Bench()
    stake = deploy_stake(b.w3, b.d, delay=3600)
    provider, other = b.w3.eth.accounts[6], b.w3.eth.accounts[7]
    admin = b.d.admin
    for who in (provider, other):
        b.send(b.d.token.functions.mint(who, 10**6 * USD), admin)
        b.send(b.d.token.functions.approve(stake.address, 10**6 * USD), who)
    b.send(stake.functions.stake(100 * USD), other)  # the contract already holds tokens
    rows = [["stake (first)", b.send(stake.functions.stake(500 * USD), provider)["gasUsed"]],
            ["stake (adding to a stake)", b.send(stake.functions.stake(100 * USD), provider)["gasUsed"]],
            ["requestWithdrawal", b.send(stake.functions.requestWithdrawal(200 * USD), provider)["gasUsed"]]]
    b.w3.provider.ethereum_tester.time_travel(b.w3.eth.get_block("latest")["timestamp"] + 3601)
    rows.append(["withdraw (after the delay)", b.send(stake.functions.withdraw(), provider)["gasUsed"]])
    consumer = b.consumer  # holds tokens already: the transfer writes a warm, non-zero balance
    rows.append(["slash to a consumer (active stake only)", b.send(stake.functions.slash(
        provider, 10 * USD, 1, os.urandom(32), consumer), b.operator)["gasUsed"]])
    b.send(stake.functions.requestWithdrawal(300 * USD), provider)
    rows.append(["slash to a consumer (active + pending stake)", b.send(stake.functions.slash(
        provider, 200 * USD, 2, os.urandom(32), consumer), b.operator)["gasUsed"]])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,50,100", help="settleBatch sizes (comma-separated)")
    parser.add_argument("--smoke", action="store_true", help="batches of 1 only")
    args = parser.parse_args()
    sizes = [1] if args.smoke else [int(s) for s in args.sizes.split(",")]

    compiler = load_artifact("JobEscrow")["compiler"]
    print(f"machine: {machine()}")
    print(f"git {git_revision()}; solc {compiler['solc']}, evmVersion {compiler['evmVersion']}, "
          f"optimizer runs {compiler['optimizer']['runs']}; py-evm via eth-tester")
    fund_rows, settle_rows, batch_rows = measure(sizes)
    transfer = token_transfer_gas()
    print(f"\nbaseline: a plain token transfer (warm balances) costs {transfer:,} gas")
    print()
    print(table(["fund", "gas", "target"], fund_rows))
    print()
    print(table(["single settle (1 provider unless said)", "gas", "target"], settle_rows))
    print()
    print(table(["settleBatch", "jobs", "gas", "gas per job", "target per job"], batch_rows))
    print()
    stake_rows = measure_stake()
    print(table(["ProviderStake", "gas"], stake_rows))

    failed = [r[0] for r in fund_rows + settle_rows if r[1] > r[2]]
    failed += [f"{r[0]} × {r[1]}" for r in batch_rows if r[4] != "" and r[3] > r[4]]
    print()
    print("all targets met" if not failed else "targets missed: " + "; ".join(failed))
    report("gas", smoke=args.smoke, baseline={"token_transfer": transfer},
           figures={"fund": fund_rows[0][1], "settle": settle_rows[0][1],
                    **{f"settle_batch_{r[1]}_{'repeat' if 'repeat' in r[0] else 'distinct'}_per_job": r[3]
                       for r in batch_rows},
                    **{f"stake: {r[0]}": r[1] for r in stake_rows}, "targets_missed": len(failed)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
