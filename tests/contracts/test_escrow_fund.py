"""Funding a job and topping it up."""

from .conftest import DAY, MINTED, job
from .support import FUNDED, NONE, REFUNDED, SETTLED, USD


def test_fund_pulls_the_deposit_and_records_the_consumer(chain):
    deadline = chain.now() + DAY
    receipt = chain.fund(job(1), 250 * USD, deadline=deadline)

    assert chain.escrow_of(job(1)) == (chain.alice, 250 * USD, deadline, FUNDED)
    assert chain.balance(chain.escrow.address) == 250 * USD
    assert chain.balance(chain.alice) == MINTED - 250 * USD
    assert chain.events(receipt, "JobFunded") == [
        {"jobId": job(1), "consumer": chain.alice, "amount": 250 * USD, "deadline": deadline}]


def test_an_unknown_job_reads_as_none(chain):
    assert chain.escrow_of(job(404)) == ("0x" + "00" * 20, 0, 0, NONE)


def test_fund_rejects_a_zero_amount(chain):
    chain.reverts(chain.fund_call(job(1), chain.alice, 0, chain.now() + DAY), chain.alice, "ZeroAmount")
    assert chain.escrow_of(job(1))[3] == NONE
    assert chain.balance(chain.alice) == MINTED


def test_fund_rejects_a_deadline_that_is_not_in_the_future(chain):
    now = chain.now()
    chain.travel_to(now + 10)
    for deadline in (now, now + 10):
        chain.reverts(chain.fund_call(job(1), chain.alice, USD, deadline), chain.alice,
                      "DeadlineNotInFuture", deadline)
    assert chain.escrow_of(job(1))[3] == NONE
    chain.fund(job(1), USD, deadline=now + 100)
    assert chain.escrow_of(job(1)) == (chain.alice, USD, now + 100, FUNDED)


def test_fund_rejects_a_job_id_already_used(chain):
    chain.fund(job(1), 10 * USD)
    chain.reverts(chain.fund_call(job(1), chain.bob, 10 * USD, chain.now() + DAY), chain.bob,
                  "JobExists", job(1), FUNDED)
    assert chain.escrow_of(job(1))[0] == chain.alice


def test_fund_rejects_a_closed_job_id(chain):
    chain.fund(job(1), 10 * USD)
    chain.settle(job(1), [(chain.carol, 5 * USD)], 0)
    chain.reverts(chain.fund_call(job(1), chain.alice, 10 * USD, chain.now() + DAY), chain.alice,
                  "JobExists", job(1), SETTLED)
    # The refused second deposit took nothing: alice paid 10 once and is owed the 5 unspent.
    assert chain.escrow_of(job(1))[3] == SETTLED
    assert chain.balance(chain.alice) == MINTED - 10 * USD
    assert chain.owed(chain.alice) == 5 * USD


def test_fund_needs_an_allowance(chain):
    token, escrow = chain.token, chain.escrow
    chain.send(token.functions.mint(chain.mallory, 100 * USD), chain.admin)
    chain.reverts(chain.fund_call(job(1), chain.mallory, 100 * USD, chain.now() + DAY), chain.mallory,
                  "ERC20InsufficientAllowance", escrow.address, 0, 100 * USD, contract="TestUSD")
    chain.send(token.functions.approve(escrow.address, 50 * USD), chain.mallory)
    chain.reverts(chain.fund_call(job(1), chain.mallory, 100 * USD, chain.now() + DAY), chain.mallory,
                  "ERC20InsufficientAllowance", escrow.address, 50 * USD, 100 * USD, contract="TestUSD")
    assert chain.escrow_of(job(1))[3] == NONE


def test_fund_needs_the_balance(chain):
    chain.send(chain.token.functions.approve(chain.escrow.address, 100 * USD), chain.mallory)
    chain.reverts(chain.fund_call(job(1), chain.mallory, 100 * USD, chain.now() + DAY), chain.mallory,
                  "ERC20InsufficientBalance", chain.mallory, 0, 100 * USD, contract="TestUSD")
    assert chain.escrow_of(job(1))[3] == NONE
    assert chain.balance(chain.escrow.address) == 0


def test_top_up_adds_to_the_consumers_deposit(chain):
    deadline = chain.now() + DAY
    chain.fund(job(1), 100 * USD, deadline=deadline)
    receipt = chain.send(chain.escrow.functions.topUp(job(1), 30 * USD), chain.alice)
    assert chain.events(receipt, "JobToppedUp") == [
        {"jobId": job(1), "from": chain.alice, "amount": 30 * USD, "total": 130 * USD}]
    assert chain.escrow_of(job(1)) == (chain.alice, 130 * USD, deadline, FUNDED)
    assert chain.balance(chain.escrow.address) == 130 * USD
    chain.settle(job(1), [(chain.carol, 100 * USD)], 10 * USD)
    assert chain.owed(chain.alice) == 20 * USD


def test_only_the_bound_consumer_tops_up(chain):
    chain.fund(job(1), 100 * USD)
    chain.reverts(chain.escrow.functions.topUp(job(1), 20 * USD), chain.bob, "NotConsumer", job(1), chain.bob)
    assert chain.escrow_of(job(1))[1] == 100 * USD
    assert chain.balance(chain.bob) == MINTED


def test_top_up_rejects_zero_unknown_and_closed_jobs(chain):
    top_up = chain.escrow.functions.topUp
    chain.reverts(top_up(job(404), USD), chain.alice, "NotFunded", job(404), NONE)
    chain.fund(job(1), 10 * USD)
    chain.reverts(top_up(job(1), 0), chain.alice, "ZeroAmount")
    assert chain.escrow_of(job(1))[1] == 10 * USD
    chain.send(chain.escrow.functions.operatorRefund(job(1)), chain.operator)
    chain.reverts(top_up(job(1), USD), chain.alice, "NotFunded", job(1), REFUNDED)
    # Nothing the refused top-ups offered was kept: alice has all her tokens back.
    assert chain.escrow_of(job(1))[3] == REFUNDED
    assert chain.balance(chain.alice) == MINTED
    assert chain.balance(chain.escrow.address) == 0


def test_top_up_cannot_overflow_the_deposit(chain):
    big = 2**96 - 1
    chain.send(chain.token.functions.mint(chain.mallory, big), chain.admin)
    chain.send(chain.token.functions.approve(chain.escrow.address, big), chain.mallory)
    chain.fund(job(1), big, consumer=chain.mallory)
    chain.panics(chain.escrow.functions.topUp(job(1), 1), chain.mallory, 0x11)
    assert chain.escrow_of(job(1))[1] == big
