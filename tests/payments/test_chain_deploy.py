"""`manage.py chain_deploy [--dev-wallets]`: deploys once, then finds what it deployed; a
chain it cannot use is an error with a message and a non-zero exit, not a traceback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from eth_account import Account

from marketplace.chain import deploy
from marketplace.models import ChainContract, ChainTransaction, Organization, ProviderStake, Wallet

from ..browser_support import ROOT
from ..chain_node import free_port
from .conftest import Chain

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("chain_deploy", *args, stdout=out)
    return out.getvalue()


def test_deploying_twice_deploys_once_and_funds_the_dev_wallets_once(bare_chain, alice, bob, carol):
    assert not ChainContract.objects.exists()

    first = run("--dev-wallets", "--mint", "500")
    contracts = dict(ChainContract.objects.values_list("name", "address"))
    second = run("--dev-wallets", "--mint", "500")

    assert set(contracts) == {"token", "escrow", "stake"}
    assert dict(ChainContract.objects.values_list("name", "address")) == contracts
    assert ChainTransaction.objects.filter(purpose="deploy").count() == 3
    assert f"escrow {contracts['escrow']}" in first and f"escrow {contracts['escrow']}" in second
    assert f"stake {contracts['stake']}" in first
    chain = Chain()
    assert chain.token.address == contracts["token"] and chain.escrow.address == contracts["escrow"]
    orgs = list(Organization.objects.all())
    assert orgs  # the dev wallets belong to the seeded organizations
    for org in orgs:
        wallet = Wallet.objects.get(organization=org)  # one custodial wallet each, not two
        assert wallet.kind == "custodial" and wallet.is_payout
        assert chain.w3.eth.get_balance(wallet.address) > 0
        # Consumers get --mint, providers --provider-mint (1,000 by default: to stake).
        assert chain.balance(wallet.address) == (500 if org.is_consumer else 1000) * 10**6
    assert ChainTransaction.objects.filter(purpose="mint").count() == 3  # alice's, bob's, carol's orgs, once


def test_dev_wallets_can_stake_for_providers_once_per_chain(bare_chain, alice, carol, carol_offer):
    first = run("--dev-wallets", "--provider-stake", "300")
    second = run("--dev-wallets", "--provider-stake", "300")
    assert "staked 300 tUSD" in first and "staked 300 tUSD" in second
    (stake,) = ProviderStake.objects.all()
    assert stake.organization == carol_offer.provider and stake.staked == Decimal("300")
    assert deploy.stake_contract().functions.stakes(stake.address).call()[0] == 300 * 10**6
    assert ChainTransaction.objects.filter(purpose="stake").count() == 1  # the second run sent none
    carol_offer.refresh_from_db()
    assert carol_offer.provider_stake == Decimal("300")
    # The second run topped the wallet up to --provider-mint again; it staked nothing more.
    assert Chain().balance(stake.address) == 1000 * 10**6


def test_an_unreachable_node_is_an_error_with_a_message(chain, settings):
    settings.CHAIN_RPC_URL = f"http://127.0.0.1:{free_port()}"
    settings.CHAIN_RPC_TIMEOUT_S = 2
    with pytest.raises(CommandError, match="does not answer"):
        run("--dev-wallets")


def test_the_command_exits_non_zero_when_the_node_is_unreachable():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test",
           "CHAIN_RPC_URL": f"http://127.0.0.1:{free_port()}", "CHAIN_RPC_TIMEOUT_S": "2"}
    done = subprocess.run([sys.executable, "manage.py", "chain_deploy", "--dev-wallets"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "The chain node does not answer" in done.stderr and "Traceback" not in done.stderr


def test_a_chain_that_is_not_a_dev_chain_needs_the_operator_key(bare_chain, monkeypatch, settings):
    settings.CHAIN_OPERATOR_KEY = ""
    monkeypatch.setattr(deploy, "DEV_CHAIN_IDS", frozenset({1337, 31337}))  # this one counts as real now
    with pytest.raises(CommandError, match="CHAIN_OPERATOR_KEY is not set"):
        run()
    assert not ChainContract.objects.exists()


def test_a_chain_that_is_not_a_dev_chain_needs_a_treasury_and_the_role_addresses(bare_chain, monkeypatch,
                                                                                settings):
    """Issue 12, items 3 and 10: unset, the treasury was an address whose key is derived from a
    string in the source, on any chain, and the operator's hot key held every role."""
    w3 = bare_chain.w3
    operator = Account.create()
    w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": operator.address, "value": 10**19})
    settings.CHAIN_OPERATOR_KEY = "0x" + bytes(operator.key).hex()
    monkeypatch.setattr(deploy, "DEV_CHAIN_IDS", frozenset({1337, 31337}))  # this one counts as real now
    for missing in ("CHAIN_TREASURY_ADDRESS", "CHAIN_ADMIN_ADDRESS", "CHAIN_PAUSER_ADDRESS"):
        treasury, admin, pauser = w3.eth.accounts[7:10]
        settings.CHAIN_TREASURY_ADDRESS, settings.CHAIN_ADMIN_ADDRESS, settings.CHAIN_PAUSER_ADDRESS = (
            treasury, admin, pauser)
        setattr(settings, missing, "")
        with pytest.raises(CommandError, match=f"{missing} is not set"):
            run()
        assert not ChainContract.objects.exists() and not ChainTransaction.objects.exists()

    settings.CHAIN_PAUSER_ADDRESS = pauser
    run()
    escrow = deploy.escrow_contract().functions
    assert escrow.treasury().call() == treasury
    names = ("DEFAULT_ADMIN_ROLE", "PAUSER_ROLE", "OPERATOR_ROLE")
    roles = {name: getattr(escrow, name)().call() for name in names}
    holders = {name: [a for a in (admin, pauser, operator.address) if escrow.hasRole(role, a).call()]
               for name, role in roles.items()}
    assert holders == {"DEFAULT_ADMIN_ROLE": [admin], "PAUSER_ROLE": [pauser],
                       "OPERATOR_ROLE": [operator.address]}
    assert deploy.stake_contract().functions.treasury().call() == treasury


def test_dev_wallets_are_refused_on_a_chain_that_is_not_a_dev_chain(chain, monkeypatch, settings, alice):
    settings.CHAIN_OPERATOR_KEY = deploy.DEV_OPERATOR_KEY  # an operator is configured
    monkeypatch.setattr(deploy, "DEV_CHAIN_IDS", frozenset({1337, 31337}))
    with pytest.raises(CommandError, match="only on development chains"):
        run("--dev-wallets", "--mint", str(Decimal("10")))
    assert not Wallet.objects.exists()
