"""Payout redirection (issue 12, item 8): any plain member of a provider organization could
move its payout wallet, at once, to an address of its choosing. Now only the
organization's admins may; the change is audited, announced on the provider's pages, and
takes effect PAYOUT_CHANGE_DELAY_S later, settlements until then paying the old wallet
(on the chain: tests/payments/test_payout_delay.py)."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from eth_account import Account

from marketplace.models import AuditEvent, Membership, PayoutChange, Wallet
from marketplace.services.wallets import payout_address

from .factories import UserFactory
from .test_api_wallets import link

pytestmark = pytest.mark.django_db
LIST = "/api/v1/wallets/"


@pytest.fixture
def erin(provider_org):
    """A plain member of carol's provider organization (carol is its owner)."""
    return UserFactory(username="erin", organization=provider_org, organization__role=Membership.Role.MEMBER)


@pytest.fixture
def two_wallets(provider_org):
    paid = Wallet.objects.create(organization=provider_org, address=Account.create().address,
                                 kind="external", is_payout=True)
    other = Wallet.objects.create(organization=provider_org, address=Account.create().address,
                                  kind="external")
    return paid, other


def test_a_plain_member_cannot_move_the_payout_wallet_by_api_or_page(api, client, erin, provider_org,
                                                                      two_wallets):
    paid, other = two_wallets
    response = api.as_user(erin).post(f"{LIST}{other.pk}/payout/")
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    client.force_login(erin)
    page = client.post(reverse("wallet_payout", args=[other.pk]))
    assert page.status_code == 403 and "Only an admin" in page.content.decode()
    # …nor sees the button on the wallets page.
    assert "Be paid here" not in client.get(reverse("wallets")).content.decode()
    assert not PayoutChange.objects.exists()
    assert payout_address(provider_org) == paid.address


def test_a_member_linking_the_first_wallet_does_not_make_it_the_payout_wallet(api, carol, erin, provider_org,
                                                                             settings):
    settings.CHAIN_RPC_URL = ""  # the in-process EVM's chain id for the SIWE messages
    mine, carols = Account.create(), Account.create()
    assert link(api.as_user(erin), mine).status_code == 201
    assert payout_address(provider_org) is None  # linked, but not where the organization is paid
    assert link(api.as_user(carol), carols).status_code == 201  # an admin's: there was none yet
    assert payout_address(provider_org) == carols.address
    assert AuditEvent.objects.filter(action="wallet.payout_set", actor=carol).count() == 1


def test_an_admins_change_is_pending_announced_audited_then_effective(api, client, carol, erin, provider_org,
                                                                      two_wallets, settings):
    settings.PAYOUT_CHANGE_DELAY_S = 3600
    paid, other = two_wallets
    admin = api.as_user(carol)
    before = timezone.now()
    response = admin.post(f"{LIST}{other.pk}/payout/")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["payout_address"] == paid.address and body["pending_address"] == other.address
    change = PayoutChange.objects.get()
    assert timedelta(seconds=3599) < change.effective_at - before < timedelta(seconds=3610)
    # A retry is the same request: the clock does not restart.
    assert admin.post(f"{LIST}{other.pk}/payout/").json()["effective_at"] == body["effective_at"]
    assert PayoutChange.objects.count() == 1
    assert AuditEvent.objects.filter(action="wallet.payout_change_requested",
                                     object_id=str(provider_org.pk), actor=carol).count() == 1

    # Every member sees the banner on the provider's pages, with the address and the time.
    client.force_login(erin)
    for name in ("provider_nodes", "wallets"):
        page = client.get(reverse(name)).content.decode()
        assert 'data-testid="payout-change-banner"' in page and other.address in page, name
    assert payout_address(provider_org) == paid.address  # not before the delay

    PayoutChange.objects.filter(pk=change.pk).update(effective_at=timezone.now())  # the delay passed
    assert payout_address(provider_org) == other.address
    assert admin.get(f"{LIST}payout/").json() == {"payout_address": other.address, "pending_address": None,
                                                  "effective_at": None, "requested_by": None}
    assert 'data-testid="payout-change-banner"' not in client.get(reverse("provider_nodes")).content.decode()
    assert AuditEvent.objects.filter(action="wallet.payout_changed").count() == 1
    assert payout_address(provider_org) == other.address  # applied once
    assert AuditEvent.objects.filter(action="wallet.payout_changed").count() == 1


def test_an_admin_keeps_the_current_wallet_by_asking_for_it(api, carol, provider_org, two_wallets, settings):
    settings.PAYOUT_CHANGE_DELAY_S = 3600
    paid, other = two_wallets
    admin = api.as_user(carol)
    assert admin.post(f"{LIST}{other.pk}/payout/").status_code == 202
    assert admin.post(f"{LIST}{paid.pk}/payout/").status_code == 200
    assert PayoutChange.objects.get().cancelled_at is not None
    assert AuditEvent.objects.filter(action="wallet.payout_change_cancelled").count() == 1
    assert payout_address(provider_org) == paid.address
