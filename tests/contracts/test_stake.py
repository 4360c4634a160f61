"""ProviderStake: staking, the two-step withdrawal with its delay, slashing once per dispute
to the consumer or the treasury, pausing and roles. Every refusal is checked for what it
left behind."""

from __future__ import annotations

import pytest

from .conftest import MINTED
from .stake_support import PROVIDER_MINT, ZERO, dispute, prepare
from .support import USD, WITHDRAW_DELAY, deploy

REPLAY_MISMATCH = 1


@pytest.fixture(scope="module")
def _staked(_deployed):
    chain, snapshot = _deployed
    return prepare(chain, snapshot)


@pytest.fixture
def stake(chain, _staked):
    contract, snapshot = _staked
    chain.tester.revert_to_snapshot(snapshot)
    return contract


def staked(chain, stake, provider, amount):
    return chain.send(stake.functions.stake(amount), provider)


def test_stake_pulls_tokens_and_adds_up(chain, stake):
    r1 = staked(chain, stake, chain.carol, 100 * USD)
    r2 = staked(chain, stake, chain.carol, 50 * USD)
    assert chain.events(r1, "Staked", stake) == [{"provider": chain.carol, "amount": 100 * USD,
                                                  "staked": 100 * USD}]
    assert chain.events(r2, "Staked", stake)[0]["staked"] == 150 * USD
    assert stake.functions.stakes(chain.carol).call() == [150 * USD, 0, 0]
    assert chain.balance(stake.address) == 150 * USD
    assert chain.balance(chain.carol) == PROVIDER_MINT - 150 * USD


def test_stake_refuses_zero_and_an_unapproved_amount(chain, stake):
    chain.reverts(stake.functions.stake(0), chain.carol, "ZeroAmount", contract="ProviderStake")
    # mallory holds tokens but approved nothing: the token's own error, nothing moves.
    chain.send(chain.token.functions.mint(chain.mallory, 5 * USD), chain.admin)
    chain.reverts(stake.functions.stake(5 * USD), chain.mallory, "ERC20InsufficientAllowance",
                  contract="TestUSD")
    assert stake.functions.stakes(chain.mallory).call() == [0, 0, 0]
    assert chain.balance(chain.mallory) == 5 * USD
    assert chain.balance(stake.address) == 0


def test_withdrawal_waits_for_the_delay(chain, stake):
    staked(chain, stake, chain.carol, 100 * USD)
    receipt = chain.send(stake.functions.requestWithdrawal(40 * USD), chain.carol)
    unlock = chain.events(receipt, "WithdrawalRequested", stake)[0]["unlockAt"]
    assert unlock == chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] + WITHDRAW_DELAY
    assert stake.functions.stakes(chain.carol).call() == [60 * USD, 40 * USD, unlock]

    chain.travel_to(unlock - 1)
    chain.reverts(stake.functions.withdraw(), chain.carol, "WithdrawalLocked", chain.carol, unlock,
                  contract="ProviderStake")
    assert stake.functions.stakes(chain.carol).call() == [60 * USD, 40 * USD, unlock]
    assert chain.balance(chain.carol) == PROVIDER_MINT - 100 * USD

    chain.travel_to(unlock + 1)
    receipt = chain.send(stake.functions.withdraw(), chain.carol)
    assert chain.events(receipt, "Withdrawn", stake) == [{"provider": chain.carol, "amount": 40 * USD}]
    assert stake.functions.stakes(chain.carol).call() == [60 * USD, 0, 0]
    assert chain.balance(chain.carol) == PROVIDER_MINT - 60 * USD
    chain.reverts(stake.functions.withdraw(), chain.carol, "NothingPending", chain.carol,
                  contract="ProviderStake")


def test_a_second_request_restarts_the_delay(chain, stake):
    staked(chain, stake, chain.carol, 100 * USD)
    first = chain.send(stake.functions.requestWithdrawal(10 * USD), chain.carol)
    first_unlock = chain.events(first, "WithdrawalRequested", stake)[0]["unlockAt"]
    chain.travel_to(first_unlock - 10)
    second = chain.send(stake.functions.requestWithdrawal(20 * USD), chain.carol)
    event = chain.events(second, "WithdrawalRequested", stake)[0]
    assert event["pending"] == 30 * USD and event["unlockAt"] == first_unlock - 10 + WITHDRAW_DELAY
    chain.travel_to(first_unlock + 1)
    chain.reverts(stake.functions.withdraw(), chain.carol, "WithdrawalLocked", chain.carol,
                  event["unlockAt"], contract="ProviderStake")


def test_request_refuses_more_than_staked(chain, stake):
    staked(chain, stake, chain.carol, 10 * USD)
    chain.reverts(stake.functions.requestWithdrawal(11 * USD), chain.carol, "InsufficientStake",
                  chain.carol, 11 * USD, 10 * USD, contract="ProviderStake")
    chain.reverts(stake.functions.requestWithdrawal(0), chain.carol, "ZeroAmount", contract="ProviderStake")
    assert stake.functions.stakes(chain.carol).call() == [10 * USD, 0, 0]


def test_slash_pays_the_consumer_once_per_dispute(chain, stake):
    staked(chain, stake, chain.carol, 100 * USD)
    fn = stake.functions.slash(chain.carol, 30 * USD, REPLAY_MISMATCH, dispute(1), chain.alice)
    receipt = chain.send(fn, chain.operator)
    assert chain.events(receipt, "Slashed", stake) == [{
        "provider": chain.carol, "disputeId": dispute(1), "amount": 30 * USD,
        "reasonCode": REPLAY_MISMATCH, "recipient": chain.alice}]
    assert stake.functions.slashedFor(dispute(1)).call() == 30 * USD
    assert chain.balance(chain.alice) == MINTED + 30 * USD
    # The same dispute again: refused, and nothing more moves.
    chain.reverts(fn, chain.operator, "AlreadySlashed", dispute(1), 30 * USD, contract="ProviderStake")
    assert stake.functions.stakes(chain.carol).call() == [70 * USD, 0, 0]
    assert chain.balance(chain.alice) == MINTED + 30 * USD
    assert chain.balance(stake.address) == 70 * USD


def test_slash_to_the_treasury_takes_pending_stake_too_and_caps_at_the_stake(chain, stake):
    staked(chain, stake, chain.carol, 100 * USD)
    chain.send(stake.functions.requestWithdrawal(80 * USD), chain.carol)
    # Stake pending withdrawal is still at stake: 20 active + 60 of the 80 pending.
    chain.send(stake.functions.slash(chain.carol, 80 * USD, 2, dispute(1), chain.treasury), chain.operator)
    staked_now, pending, _ = stake.functions.stakes(chain.carol).call()
    assert (staked_now, pending) == (0, 20 * USD)
    # More than is left: capped at what is left.
    receipt = chain.send(stake.functions.slash(chain.carol, 500 * USD, 2, dispute(2), chain.treasury),
                         chain.operator)
    assert chain.events(receipt, "Slashed", stake)[0]["amount"] == 20 * USD
    assert chain.balance(chain.treasury) == 100 * USD
    assert chain.balance(stake.address) == 0
    chain.reverts(stake.functions.slash(chain.carol, USD, 2, dispute(3), chain.treasury), chain.operator,
                  "NothingToSlash", chain.carol, contract="ProviderStake")


def test_slash_refusals_leave_everything_as_it_was(chain, stake):
    staked(chain, stake, chain.carol, 100 * USD)
    f = stake.functions
    role = f.OPERATOR_ROLE().call()
    chain.reverts(f.slash(chain.carol, USD, 1, dispute(1), chain.mallory), chain.mallory,
                  "AccessControlUnauthorizedAccount", chain.mallory, role, contract="ProviderStake")
    chain.reverts(f.slash(chain.carol, USD, 1, b"\0" * 32, chain.alice), chain.operator, "ZeroDispute",
                  contract="ProviderStake")
    chain.reverts(f.slash(chain.carol, 0, 1, dispute(1), chain.alice), chain.operator, "ZeroAmount",
                  contract="ProviderStake")
    chain.reverts(f.slash(chain.carol, USD, 1, dispute(1), ZERO), chain.operator, "ZeroAddress",
                  contract="ProviderStake")
    chain.reverts(f.slash(chain.dave, USD, 1, dispute(1), chain.alice), chain.operator, "NothingToSlash",
                  chain.dave, contract="ProviderStake")
    assert f.stakes(chain.carol).call() == [100 * USD, 0, 0]
    assert f.slashedFor(dispute(1)).call() == 0
    assert chain.balance(stake.address) == 100 * USD
    assert chain.balance(chain.mallory) == 0


def test_pause_stops_stake_requests_and_slashes_but_not_withdrawals(chain, stake):
    staked(chain, stake, chain.carol, 100 * USD)
    chain.send(stake.functions.requestWithdrawal(40 * USD), chain.carol)
    chain.reverts(stake.functions.pause(), chain.operator, "AccessControlUnauthorizedAccount",
                  chain.operator, stake.functions.PAUSER_ROLE().call(), contract="ProviderStake")
    chain.send(stake.functions.pause(), chain.admin)
    chain.reverts(stake.functions.stake(USD), chain.carol, "EnforcedPause", contract="ProviderStake")
    chain.reverts(stake.functions.requestWithdrawal(USD), chain.carol, "EnforcedPause",
                  contract="ProviderStake")
    chain.reverts(stake.functions.slash(chain.carol, USD, 1, dispute(1), chain.alice), chain.operator,
                  "EnforcedPause", contract="ProviderStake")
    assert stake.functions.stakes(chain.carol).call()[:2] == [60 * USD, 40 * USD]
    # The platform cannot hold a stake hostage: the withdrawal goes through while paused.
    chain.travel_to(stake.functions.stakes(chain.carol).call()[2])
    chain.send(stake.functions.withdraw(), chain.carol)
    assert chain.balance(chain.carol) == PROVIDER_MINT - 60 * USD
    chain.send(stake.functions.unpause(), chain.admin)
    chain.send(stake.functions.slash(chain.carol, USD, 1, dispute(1), chain.alice), chain.operator)


def test_roles_and_construction(chain, stake):
    f = stake.functions
    assert f.hasRole(f.OPERATOR_ROLE().call(), chain.operator).call()
    assert f.hasRole(f.PAUSER_ROLE().call(), chain.admin).call()
    assert not f.hasRole(f.OPERATOR_ROLE().call(), chain.admin).call()
    assert (f.token().call(), f.treasury().call(), f.withdrawDelay().call()) == (
        chain.token.address, chain.treasury, WITHDRAW_DELAY)
    for which in range(4):
        args = [chain.token.address, chain.treasury, chain.admin, chain.operator, 1]
        args[which] = ZERO
        with pytest.raises(Exception, match="deploying ProviderStake failed|revert"):
            deploy(chain.w3, "ProviderStake", *args, sender=chain.admin)
