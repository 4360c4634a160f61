"""Settling jobs one at a time and in batches."""

from web3 import Web3

from .conftest import job, settlement
from .support import FUNDED, NONE, REFUNDED, SETTLED, USD

ZERO = "0x" + "00" * 20


def test_settle_credits_providers_fee_and_the_remainder(chain):
    deadline = chain.now() + 3600
    chain.fund(job(1), 100 * USD, deadline=deadline)
    receipt = chain.settle(job(1), [(chain.carol, 60 * USD), (chain.dave, 25 * USD)], 5 * USD)

    assert chain.owed(chain.carol) == 60 * USD
    assert chain.owed(chain.dave) == 25 * USD
    assert chain.owed(chain.treasury) == 5 * USD
    assert chain.owed(chain.alice) == 10 * USD
    # Credits only: the tokens stay in the escrow until withdrawn.
    assert chain.balance(chain.escrow.address) == 100 * USD
    assert chain.escrow_of(job(1)) == (ZERO, 0, deadline, SETTLED)
    assert chain.events(receipt, "JobSettled") == [
        {"jobId": job(1), "paidToProviders": 85 * USD, "fee": 5 * USD, "refunded": 10 * USD}]


def test_settle_may_spend_the_whole_deposit_or_pay_nobody(chain):
    chain.fund(job(1), 100 * USD)
    chain.settle(job(1), [(chain.carol, 95 * USD)], 5 * USD)
    assert chain.owed(chain.alice) == 0

    chain.fund(job(2), 100 * USD)
    receipt = chain.settle(job(2), [], 0)  # e.g. cancelled after funding: all back
    assert chain.owed(chain.alice) == 100 * USD
    assert chain.events(receipt, "JobSettled")[0]["refunded"] == 100 * USD


def test_a_provider_listed_twice_is_credited_twice(chain):
    chain.fund(job(1), 100 * USD)
    chain.settle(job(1), [(chain.carol, 30 * USD), (chain.carol, 20 * USD)], 0)
    assert chain.owed(chain.carol) == 50 * USD
    assert chain.owed(chain.alice) == 50 * USD


def test_a_job_settles_only_once(chain):
    chain.fund(job(1), 100 * USD)
    chain.settle(job(1), [(chain.carol, 50 * USD)], USD)
    again = chain.escrow.functions.settle(settlement(job(1), [(chain.carol, 50 * USD)], USD))
    chain.reverts(again, chain.operator, "NotFunded", job(1), SETTLED)
    assert chain.owed(chain.carol) == 50 * USD


def test_settle_rejects_unknown_and_refunded_jobs(chain):
    settle = chain.escrow.functions.settle
    chain.reverts(settle(settlement(job(404), [], 0)), chain.operator, "NotFunded", job(404), NONE)
    chain.fund(job(1), 100 * USD)
    chain.send(chain.escrow.functions.operatorRefund(job(1)), chain.operator)
    chain.reverts(settle(settlement(job(1), [(chain.carol, USD)], 0)), chain.operator,
                  "NotFunded", job(1), REFUNDED)
    assert chain.owed(chain.carol) == 0


def test_settle_never_pays_more_than_the_deposit(chain):
    chain.fund(job(1), 100 * USD)
    settle = chain.escrow.functions.settle
    chain.reverts(settle(settlement(job(1), [(chain.carol, 100 * USD)], 1)), chain.operator,
                  "PayoutExceedsDeposit", job(1), 100 * USD + 1, 100 * USD)
    chain.reverts(settle(settlement(job(1), [(chain.carol, 60 * USD), (chain.dave, 41 * USD)], 0)),
                  chain.operator, "PayoutExceedsDeposit", job(1), 101 * USD, 100 * USD)
    chain.reverts(settle(settlement(job(1), [], 100 * USD + 1)), chain.operator,
                  "PayoutExceedsDeposit", job(1), 100 * USD + 1, 100 * USD)
    consumer, amount, _, state = chain.escrow_of(job(1))
    assert (consumer, amount, state) == (chain.alice, 100 * USD, FUNDED)
    assert chain.owed(chain.carol) == 0 and chain.owed(chain.treasury) == 0


def test_settle_rejects_malformed_settlements(chain):
    chain.fund(job(1), 100 * USD)
    settle = chain.escrow.functions.settle
    chain.reverts(settle((job(1), [chain.carol, chain.dave], [USD], 0)), chain.operator,
                  "LengthMismatch", job(1), 2, 1)
    chain.reverts(settle(settlement(job(1), [(chain.carol, USD), (ZERO, USD)], 0)), chain.operator,
                  "ZeroProvider", job(1))
    assert chain.escrow_of(job(1))[3] == FUNDED


def test_only_the_operator_settles(chain):
    chain.fund(job(1), 100 * USD)
    role = chain.escrow.functions.OPERATOR_ROLE().call()
    for who in (chain.alice, chain.carol, chain.admin):
        chain.reverts(chain.escrow.functions.settle(settlement(job(1), [(who, 100 * USD)], 0)), who,
                      "AccessControlUnauthorizedAccount", who, role)
        chain.reverts(chain.escrow.functions.settleBatch([settlement(job(1), [(who, 100 * USD)], 0)]),
                      who, "AccessControlUnauthorizedAccount", who, role)
    assert chain.escrow_of(job(1))[3] == FUNDED


def test_no_settlement_while_paused(chain):
    chain.fund(job(1), 100 * USD)
    chain.send(chain.escrow.functions.pause(), chain.admin)
    s = settlement(job(1), [(chain.carol, 50 * USD)], 0)
    chain.reverts(chain.escrow.functions.settle(s), chain.operator, "EnforcedPause")
    chain.reverts(chain.escrow.functions.settleBatch([s]), chain.operator, "EnforcedPause")
    chain.send(chain.escrow.functions.unpause(), chain.admin)
    chain.send(chain.escrow.functions.settle(s), chain.operator)
    assert chain.owed(chain.carol) == 50 * USD


def test_settle_batch_settles_every_funded_job(chain):
    for n in (1, 2, 3):
        chain.fund(job(n), 100 * USD, consumer=chain.alice if n != 2 else chain.bob)
    batch = [settlement(job(1), [(chain.carol, 50 * USD)], 5 * USD),
             settlement(job(2), [(chain.dave, 70 * USD), (chain.carol, 10 * USD)], 10 * USD),
             settlement(job(3), [(chain.carol, 100 * USD)], 0)]
    assert chain.escrow.functions.settleBatch(batch).call({"from": chain.operator}) == 3
    receipt = chain.send(chain.escrow.functions.settleBatch(batch), chain.operator)

    assert [e["jobId"] for e in chain.events(receipt, "JobSettled")] == [job(1), job(2), job(3)]
    assert chain.events(receipt, "JobSettled")[1] == {
        "jobId": job(2), "paidToProviders": 80 * USD, "fee": 10 * USD, "refunded": 10 * USD}
    assert chain.events(receipt, "SettlementSkipped") == []
    assert chain.owed(chain.carol) == 160 * USD
    assert chain.owed(chain.dave) == 70 * USD
    assert chain.owed(chain.treasury) == 15 * USD
    assert chain.owed(chain.alice) == 45 * USD
    assert chain.owed(chain.bob) == 10 * USD
    assert all(chain.escrow_of(job(n))[3] == SETTLED for n in (1, 2, 3))


def test_settle_batch_skips_closed_and_unknown_jobs(chain):
    chain.fund(job(1), 100 * USD)
    chain.fund(job(2), 100 * USD)
    chain.fund(job(3), 100 * USD)
    chain.settle(job(1), [(chain.carol, 10 * USD)], 0)
    chain.send(chain.escrow.functions.operatorRefund(job(2)), chain.operator)
    batch = [settlement(job(1), [(chain.carol, 90 * USD)], 0),
             settlement(job(2), [(chain.carol, 90 * USD)], 0),
             settlement(job(404), [(chain.carol, 90 * USD)], 0),
             settlement(job(3), [(chain.dave, 40 * USD)], USD)]
    assert chain.escrow.functions.settleBatch(batch).call({"from": chain.operator}) == 1
    receipt = chain.send(chain.escrow.functions.settleBatch(batch), chain.operator)

    assert chain.events(receipt, "SettlementSkipped") == [
        {"jobId": job(1), "state": SETTLED}, {"jobId": job(2), "state": REFUNDED},
        {"jobId": job(404), "state": NONE}]
    assert [e["jobId"] for e in chain.events(receipt, "JobSettled")] == [job(3)]
    assert chain.owed(chain.carol) == 10 * USD
    assert chain.owed(chain.dave) == 40 * USD


def test_a_retried_batch_changes_nothing(chain):
    for n in range(5):
        chain.fund(job(n), 20 * USD)
    batch = [settlement(job(n), [(chain.carol, 10 * USD)], USD) for n in range(5)]
    chain.send(chain.escrow.functions.settleBatch(batch), chain.operator)
    owed = {a: chain.owed(a) for a in (chain.carol, chain.treasury, chain.alice)}
    held = chain.balance(chain.escrow.address)

    assert chain.escrow.functions.settleBatch(batch).call({"from": chain.operator}) == 0
    receipt = chain.send(chain.escrow.functions.settleBatch(batch), chain.operator)
    assert len(chain.events(receipt, "SettlementSkipped")) == 5
    assert chain.events(receipt, "JobSettled") == []
    assert {a: chain.owed(a) for a in owed} == owed
    assert chain.balance(chain.escrow.address) == held


def test_a_job_twice_in_one_batch_settles_once(chain):
    chain.fund(job(1), 100 * USD)
    s = settlement(job(1), [(chain.carol, 60 * USD)], 0)
    receipt = chain.send(chain.escrow.functions.settleBatch([s, s]), chain.operator)
    assert chain.events(receipt, "SettlementSkipped") == [{"jobId": job(1), "state": SETTLED}]
    assert chain.owed(chain.carol) == 60 * USD


def test_one_over_deposit_payout_reverts_the_whole_batch(chain):
    chain.fund(job(1), 100 * USD)
    chain.fund(job(2), 100 * USD)
    batch = [settlement(job(1), [(chain.carol, 50 * USD)], 0),
             settlement(job(2), [(chain.carol, 99 * USD)], 2 * USD)]
    chain.reverts(chain.escrow.functions.settleBatch(batch), chain.operator,
                  "PayoutExceedsDeposit", job(2), 101 * USD, 100 * USD)
    assert chain.escrow_of(job(1))[3] == FUNDED
    assert chain.owed(chain.carol) == 0


def test_a_malformed_settlement_reverts_the_whole_batch(chain):
    chain.fund(job(1), 100 * USD)
    chain.fund(job(2), 100 * USD)
    good = settlement(job(1), [(chain.carol, 50 * USD)], 0)
    chain.reverts(chain.escrow.functions.settleBatch([good, (job(2), [chain.carol], [], 0)]),
                  chain.operator, "LengthMismatch", job(2), 1, 0)
    chain.reverts(chain.escrow.functions.settleBatch([good, settlement(job(2), [(ZERO, 1)], 0)]),
                  chain.operator, "ZeroProvider", job(2))
    assert chain.escrow_of(job(1))[3] == FUNDED


def test_an_empty_batch_does_nothing(chain):
    assert chain.escrow.functions.settleBatch([]).call({"from": chain.operator}) == 0
    chain.send(chain.escrow.functions.settleBatch([]), chain.operator)
    assert chain.owed(chain.treasury) == 0


def test_a_batch_of_fifty_new_providers_stays_within_the_gas_target(chain):
    providers = [Web3.to_checksum_address(Web3.keccak(text=f"provider-{n}")[:20]) for n in range(50)]
    for n in range(50):
        chain.fund(job(n), 10 * USD)
    batch = [settlement(job(n), [(providers[n], 9 * USD)], USD // 2) for n in range(50)]
    receipt = chain.w3.eth.get_transaction_receipt(chain.escrow.functions.settleBatch(batch).transact(
        {"from": chain.operator, "gas": 10_000_000}))
    assert receipt["status"] == 1
    assert receipt["gasUsed"] <= 50 * 30_000  # docs/BENCHMARKS.md, bench/gas.py
    assert chain.owed(providers[49]) == 9 * USD
    assert chain.owed(chain.treasury) == 25 * USD
    assert chain.owed(chain.alice) == 25 * USD
