"""Pull payments: withdraw and withdrawFor; roles and construction."""

import pytest

from .conftest import MINTED, job
from .support import REFUNDED, USD, deploy


def _settled(chain):
    chain.fund(job(1), 100 * USD)
    chain.settle(job(1), [(chain.carol, 70 * USD)], 5 * USD)


def test_withdraw_pays_the_caller_its_credit_once(chain):
    _settled(chain)
    receipt = chain.send(chain.escrow.functions.withdraw(), chain.carol)
    assert chain.events(receipt, "Withdrawn") == [{"account": chain.carol, "amount": 70 * USD}]
    assert chain.balance(chain.carol) == 70 * USD
    assert chain.owed(chain.carol) == 0
    assert chain.balance(chain.escrow.address) == 30 * USD
    chain.reverts(chain.escrow.functions.withdraw(), chain.carol, "NothingOwed", chain.carol)


def test_withdraw_for_pays_only_the_account_itself(chain):
    _settled(chain)
    # The platform (or anyone) pushes each credit to its owner.
    for account, amount in ((chain.carol, 70 * USD), (chain.treasury, 5 * USD), (chain.alice, 25 * USD)):
        receipt = chain.send(chain.escrow.functions.withdrawFor(account), chain.mallory)
        assert chain.events(receipt, "Withdrawn") == [{"account": account, "amount": amount}]
    assert chain.balance(chain.carol) == 70 * USD
    assert chain.balance(chain.treasury) == 5 * USD
    assert chain.balance(chain.alice) == MINTED - 75 * USD
    assert chain.balance(chain.mallory) == 0
    assert chain.balance(chain.escrow.address) == 0
    chain.reverts(chain.escrow.functions.withdrawFor(chain.dave), chain.mallory, "NothingOwed", chain.dave)


def test_withdrawals_work_while_paused(chain):
    _settled(chain)
    chain.send(chain.escrow.functions.pause(), chain.admin)
    chain.send(chain.escrow.functions.withdraw(), chain.carol)
    chain.send(chain.escrow.functions.withdrawFor(chain.alice), chain.operator)
    assert chain.balance(chain.carol) == 70 * USD
    assert chain.owed(chain.alice) == 0


def test_credits_accumulate_across_jobs(chain):
    chain.fund(job(1), 100 * USD)
    chain.fund(job(2), 50 * USD, consumer=chain.bob)
    chain.settle(job(1), [(chain.carol, 40 * USD)], USD)
    chain.settle(job(2), [(chain.carol, 30 * USD)], USD)
    assert chain.owed(chain.carol) == 70 * USD
    assert chain.owed(chain.treasury) == 2 * USD
    chain.send(chain.escrow.functions.withdraw(), chain.carol)
    assert chain.balance(chain.carol) == 70 * USD


def test_roles_after_deployment(chain):
    e = chain.escrow.functions
    admin_role, operator_role, pauser_role = (e.DEFAULT_ADMIN_ROLE().call(), e.OPERATOR_ROLE().call(),
                                              e.PAUSER_ROLE().call())
    assert e.hasRole(admin_role, chain.admin).call()
    assert e.hasRole(pauser_role, chain.admin).call()
    assert e.hasRole(operator_role, chain.operator).call()
    assert not e.hasRole(operator_role, chain.admin).call()
    assert not e.hasRole(admin_role, chain.operator).call()
    assert e.token().call() == chain.token.address
    assert e.treasury().call() == chain.treasury


def test_the_admin_can_hand_the_operator_role_over(chain):
    role = chain.escrow.functions.OPERATOR_ROLE().call()
    chain.fund(job(1), 10 * USD)  # on terms the old operator signed
    chain.send(chain.escrow.functions.grantRole(role, chain.dave), chain.admin)
    chain.send(chain.escrow.functions.revokeRole(role, chain.operator), chain.admin)
    assert chain.escrow.functions.hasRole(role, chain.dave).call()
    assert not chain.escrow.functions.hasRole(role, chain.operator).call()
    chain.send(chain.escrow.functions.operatorRefund(job(1)), chain.dave)
    assert chain.escrow_of(job(1))[3] == REFUNDED
    chain.reverts(chain.escrow.functions.settleBatch([]), chain.operator,
                  "AccessControlUnauthorizedAccount", chain.operator, role)


@pytest.mark.parametrize("which", range(5))
def test_the_constructor_rejects_zero_addresses(chain, which):
    args = [chain.token.address, chain.treasury, chain.admin, chain.admin, chain.operator]
    args[which] = "0x" + "00" * 20
    with pytest.raises(Exception, match="deploying JobEscrow failed|revert"):
        deploy(chain.w3, "JobEscrow", *args, sender=chain.admin)


def test_test_usd_is_a_six_decimal_token_that_only_minters_mint(chain):
    t = chain.token.functions
    assert (t.name().call(), t.symbol().call(), t.decimals().call()) == ("Test USD", "tUSD", 6)
    role = t.MINTER_ROLE().call()
    chain.reverts(t.mint(chain.mallory, USD), chain.mallory, "AccessControlUnauthorizedAccount",
                  chain.mallory, role, contract="TestUSD")
    chain.send(t.grantRole(role, chain.operator), chain.admin)
    chain.send(t.mint(chain.mallory, 5 * USD), chain.operator)
    assert t.balanceOf(chain.mallory).call() == 5 * USD
    assert t.totalSupply().call() == 2 * MINTED + 5 * USD
