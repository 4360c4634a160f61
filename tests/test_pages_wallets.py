"""The wallets page (linking itself runs in the browser: tests/test_browser_wallet.py) and the
payouts on the provider's dashboard."""

from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.models import ChainTransaction, Payout, Settlement, Wallet

from .factories import JobFactory, UserFactory

pytestmark = pytest.mark.django_db
ADDR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def test_wallets_page_lists_the_organizations_wallets_and_the_payout_one(client, carol, provider_org,
                                                                         dave, other_provider_org):
    Wallet.objects.create(organization=provider_org, address=ADDR, kind="external", linked_by=carol,
                          is_payout=True)
    Wallet.objects.create(organization=other_provider_org, address=OTHER, kind="external")
    client.force_login(carol)
    page = client.get(reverse("wallets")).content.decode()
    assert ADDR in page and OTHER not in page
    assert 'data-testid="payout-wallet"' in page and "by carol" in page
    assert 'data-testid="link-wallet"' in page and "js/wallet.js" in page
    assert reverse("api:wallet-siwe-nonce") in page and reverse("api:wallet-link") in page


def test_provider_moves_payouts_to_another_wallet(client, carol, provider_org, settings):
    settings.PAYOUT_CHANGE_DELAY_S = 0  # the delay itself: tests/test_payout_wallets.py
    first = Wallet.objects.create(organization=provider_org, address=ADDR, kind="external", is_payout=True)
    second = Wallet.objects.create(organization=provider_org, address=OTHER, kind="external")
    client.force_login(carol)
    response = client.post(reverse("wallet_payout", args=[second.pk]), follow=True)
    assert f"Payouts go to {OTHER} from" in response.content.decode()
    first.refresh_from_db(), second.refresh_from_db()
    assert second.is_payout and not first.is_payout


def test_payout_wallet_of_another_organization_cannot_be_chosen(client, dave, carol, provider_org):
    wallet = Wallet.objects.create(organization=provider_org, address=ADDR, kind="external")
    client.force_login(dave)
    assert client.post(reverse("wallet_payout", args=[wallet.pk])).status_code == 404
    wallet.refresh_from_db()
    assert not wallet.is_payout


def test_wallets_page_needs_an_organization(client, db):
    client.force_login(UserFactory(username="erin"))
    assert client.get(reverse("wallets")).status_code == 403
    client.logout()
    assert client.get(reverse("wallets")).status_code == 302  # to the login page


def test_provider_dashboard_shows_payouts(client, carol, provider_org, healthcare):
    Wallet.objects.create(organization=provider_org, address=ADDR, kind="external", is_payout=True)
    job = JobFactory(owner=healthcare, name="sepsis risk", status="settled")
    tx = ChainTransaction.objects.create(chain_id=31337, purpose="settle", sender=OTHER, nonce=7,
                                         raw="0x00", tx_hash="0x" + "ab" * 32, status="confirmed")
    settlement = Settlement.objects.create(job=job, status="settled", charged=Decimal("2.5"),
                                           fee=Decimal("0.125"), refunded=Decimal("97.5"),
                                           transaction=tx, settled_at=timezone.now())
    Payout.objects.create(settlement=settlement, provider=provider_org, address=ADDR,
                          amount=Decimal("2.375"))
    pending = Settlement.objects.create(job=JobFactory(owner=healthcare, name="load forecast"),
                                        charged=Decimal("1"), fee=Decimal("0.05"), refunded=Decimal("0"))
    Payout.objects.create(settlement=pending, provider=provider_org, address="", amount=Decimal("0.95"))
    client.force_login(carol)
    page = client.get(reverse("provider_nodes")).content.decode()
    assert 'data-testid="payouts"' in page
    assert f"#{job.pk}" in page and "sepsis risk" in page and "2.375" in page and "tUSD" in page
    assert ADDR in page and "Settled on chain" in page
    assert f'href="{reverse("chain-tx", args=[tx.tx_hash])}"' in page
    assert "load forecast" in page and "waiting for a payout wallet" in page


def test_provider_dashboard_without_payouts_says_so(client, carol):
    client.force_login(carol)
    page = client.get(reverse("provider_nodes")).content.decode()
    assert "No payouts yet" in page and "no payout wallet yet" in page
