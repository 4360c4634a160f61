"""Refunds: the consumer's after the deadline, the operator's at any time, and pausing."""

from .conftest import MINTED, job, settlement
from .support import FUNDED, NONE, REFUNDED, SETTLED, USD

ZERO = "0x" + "00" * 20


def test_the_consumer_cannot_refund_before_the_deadline(chain):
    deadline = chain.now() + 1000
    chain.fund(job(1), 100 * USD, deadline=deadline)
    chain.travel_to(deadline - 1)
    chain.reverts(chain.escrow.functions.refund(job(1)), chain.alice, "DeadlineNotReached", job(1), deadline)
    assert chain.escrow_of(job(1))[3] == FUNDED


def test_the_consumer_gets_the_whole_deposit_back_from_the_deadline_on(chain):
    deadline = chain.now() + 1000
    chain.fund(job(1), 100 * USD, deadline=deadline)
    chain.send(chain.escrow.functions.topUp(job(1), 20 * USD), chain.alice)
    chain.travel_to(deadline)
    receipt = chain.send(chain.escrow.functions.refund(job(1)), chain.alice)

    # The top-up comes back with the deposit.
    assert chain.balance(chain.alice) == MINTED
    assert chain.balance(chain.escrow.address) == 0
    assert chain.escrow_of(job(1)) == (ZERO, 0, deadline, REFUNDED)
    assert chain.events(receipt, "JobRefunded") == [
        {"jobId": job(1), "consumer": chain.alice, "amount": 120 * USD}]
    chain.reverts(chain.escrow.functions.refund(job(1)), chain.alice, "NotFunded", job(1), REFUNDED)


def test_only_the_consumer_refunds(chain):
    deadline = chain.now() + 1000
    chain.fund(job(1), 100 * USD, deadline=deadline)
    chain.travel_to(deadline + 1)
    for who in (chain.bob, chain.operator, chain.mallory):
        chain.reverts(chain.escrow.functions.refund(job(1)), who, "NotConsumer", job(1), who)
    assert chain.escrow_of(job(1))[3] == FUNDED


def test_no_refund_after_settlement(chain):
    deadline = chain.now() + 1000
    chain.fund(job(1), 100 * USD, deadline=deadline)
    chain.settle(job(1), [(chain.carol, 80 * USD)], 0)
    chain.travel_to(deadline + 1)
    chain.reverts(chain.escrow.functions.refund(job(1)), chain.alice, "NotFunded", job(1), SETTLED)
    chain.reverts(chain.escrow.functions.operatorRefund(job(1)), chain.operator, "NotFunded", job(1), SETTLED)
    assert chain.owed(chain.alice) == 20 * USD
    assert chain.balance(chain.escrow.address) == 100 * USD


def test_no_refund_of_an_unknown_job(chain):
    chain.reverts(chain.escrow.functions.refund(job(404)), chain.alice, "NotFunded", job(404), NONE)
    chain.reverts(chain.escrow.functions.operatorRefund(job(404)), chain.operator,
                  "NotFunded", job(404), NONE)
    assert chain.escrow_of(job(404)) == (ZERO, 0, 0, NONE)
    assert chain.balance(chain.escrow.address) == 0


def test_the_consumer_refunds_while_paused(chain):
    deadline = chain.now() + 1000
    chain.fund(job(1), 100 * USD, deadline=deadline)
    chain.send(chain.escrow.functions.pause(), chain.admin)
    chain.travel_to(deadline)
    chain.send(chain.escrow.functions.refund(job(1)), chain.alice)
    assert chain.balance(chain.alice) == MINTED


def test_the_operator_refunds_at_any_time(chain):
    deadline = chain.now() + 10 * 86_400
    chain.fund(job(1), 100 * USD, deadline=deadline)
    receipt = chain.send(chain.escrow.functions.operatorRefund(job(1)), chain.operator)
    assert chain.events(receipt, "JobRefunded") == [
        {"jobId": job(1), "consumer": chain.alice, "amount": 100 * USD}]
    assert chain.balance(chain.alice) == MINTED
    assert chain.escrow_of(job(1)) == (ZERO, 0, deadline, REFUNDED)
    # Refunded is final: no settlement, no second refund.
    s = settlement(job(1), [(chain.carol, USD)], 0)
    chain.reverts(chain.escrow.functions.settle(s), chain.operator, "NotFunded", job(1), REFUNDED)
    chain.reverts(chain.escrow.functions.operatorRefund(job(1)), chain.operator,
                  "NotFunded", job(1), REFUNDED)


def test_the_operator_refunds_while_paused(chain):
    chain.fund(job(1), 100 * USD)
    chain.send(chain.escrow.functions.pause(), chain.admin)
    chain.send(chain.escrow.functions.operatorRefund(job(1)), chain.operator)
    assert chain.escrow_of(job(1))[3] == REFUNDED


def test_only_the_operator_force_refunds(chain):
    chain.fund(job(1), 100 * USD)
    role = chain.escrow.functions.OPERATOR_ROLE().call()
    for who in (chain.alice, chain.admin, chain.mallory):
        chain.reverts(chain.escrow.functions.operatorRefund(job(1)), who,
                      "AccessControlUnauthorizedAccount", who, role)
    assert chain.escrow_of(job(1))[3] == FUNDED
    assert chain.balance(chain.escrow.address) == 100 * USD
    chain.send(chain.escrow.functions.operatorRefund(job(1)), chain.operator)
    assert chain.escrow_of(job(1))[3] == REFUNDED


def test_pause_blocks_funding_and_top_ups(chain):
    chain.fund(job(1), 100 * USD)
    receipt = chain.send(chain.escrow.functions.pause(), chain.admin)
    assert chain.events(receipt, "Paused") == [{"account": chain.admin}]
    assert chain.escrow.functions.paused().call()
    chain.reverts(chain.fund_call(job(2), chain.alice, USD, chain.now() + 1000), chain.alice, "EnforcedPause")
    chain.reverts(chain.escrow.functions.topUp(job(1), USD), chain.alice, "EnforcedPause")
    chain.send(chain.escrow.functions.unpause(), chain.admin)
    chain.fund(job(2), USD)
    chain.send(chain.escrow.functions.topUp(job(1), USD), chain.alice)


def test_only_the_pauser_pauses(chain):
    role = chain.escrow.functions.PAUSER_ROLE().call()
    for who in (chain.operator, chain.alice):
        chain.reverts(chain.escrow.functions.pause(), who, "AccessControlUnauthorizedAccount", who, role)
    assert not chain.escrow.functions.paused().call()
    chain.send(chain.escrow.functions.pause(), chain.admin)
    chain.reverts(chain.escrow.functions.unpause(), chain.operator, "AccessControlUnauthorizedAccount",
                  chain.operator, role)
    assert chain.escrow.functions.paused().call()
