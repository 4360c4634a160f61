"""Django admin for payments: wallets (never their keys), chain transactions, escrows with the
forced refund (through its service, on the in-process chain), settlements with payouts."""

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from marketplace.chain import deploy, indexer
from marketplace.models import (
    AuditEvent,
    ChainTransaction,
    Escrow,
    Job,
    Payout,
    Settlement,
    Wallet,
)
from marketplace.services import escrow_events, funding, payments
from marketplace.services.wallets import custodial_key, wallet_create_custodial

from .factories import JobFactory

pytestmark = pytest.mark.django_db
E = Escrow.Status


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def chain(settings):
    """The in-process chain with the contracts deployed and the escrow on."""
    settings.ESCROW_ENABLED = True
    settings.CHAIN_RPC_URL = ""
    deploy.deploy()


@pytest.fixture
def consumer_wallet(chain, healthcare) -> Wallet:
    wallet = wallet_create_custodial(organization=healthcare)
    deploy.give_gas(wallet.address)
    deploy.mint_to(wallet.address, Decimal("50"))
    return wallet


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Transactions are broadcast once their row commits (on_commit): run those hooks."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def _funded_job(owner, committed, budget: str = "10") -> Job:
    job = JobFactory(owner=owner, budget=Decimal(budget), status=Job.Status.SUBMITTED)
    with committed():
        funding.job_fund(job=job)
    indexer.index_events()
    job.refresh_from_db()
    assert job.status == Job.Status.FUNDED
    return job


def test_force_refund_returns_funded_escrows_and_says_which_were_refused(staff, admin_user, committed,
                                                                         consumer_wallet, healthcare):
    funded = _funded_job(healthcare, committed)
    unfunded = JobFactory(owner=healthcare, status=Job.Status.SUBMITTED)
    funding.escrow_of(unfunded)
    token = deploy.token_contract()
    before = token.functions.balanceOf(consumer_wallet.address).call()
    escrows = Escrow.objects.filter(job__in=[funded, unfunded]).order_by("pk")
    with committed():
        response = staff.post(reverse("admin:marketplace_escrow_changelist"),
                              {"action": "force_refund", "_selected_action": [e.pk for e in escrows]},
                              follow=True)
    assert response.status_code == 200
    texts = _messages(response)
    assert any(t.startswith(f"Refund sent for job {funded.pk} (0x") for t in texts), texts
    assert f"Not refunded: job {unfunded.pk}: Only a funded escrow" in " ".join(texts)
    refund = ChainTransaction.objects.get(purpose="refund")
    assert refund.tx_hash in " ".join(texts)
    assert AuditEvent.objects.filter(action="escrow.force_refund", object_id=str(funded.pk),
                                     actor=admin_user).exists()
    # The chain returned the deposit; the indexer moves the escrow and the job.
    indexer.index_events()
    assert Escrow.objects.get(job=funded).status == E.REFUNDED
    assert Escrow.objects.get(job=unfunded).status == E.UNFUNDED
    assert Job.objects.get(pk=funded.pk).status == Job.Status.REFUNDED
    assert token.functions.balanceOf(consumer_wallet.address).call() == before + 10 * 10**6


def test_force_refund_refuses_a_refunded_escrow(staff, consumer_wallet, healthcare, committed):
    job = _funded_job(healthcare, committed)
    with committed():
        payments.escrow_force_refund(job=job)
    indexer.index_events()
    escrow = Escrow.objects.get(job=job)
    response = staff.post(reverse("admin:marketplace_escrow_changelist"),
                          {"action": "force_refund", "_selected_action": [escrow.pk]}, follow=True)
    assert [t for t in _messages(response) if t.startswith("Not refunded")], _messages(response)
    assert ChainTransaction.objects.filter(purpose="refund").count() == 1


def test_wallet_pages_never_show_the_key(staff, consumer_wallet):
    wallet = consumer_wallet
    key = custodial_key(wallet)
    pages = [staff.get(reverse("admin:marketplace_wallet_changelist")),
             staff.get(reverse("admin:marketplace_wallet_changelist"), {"q": wallet.address}),
             staff.get(reverse("admin:marketplace_wallet_change", args=[wallet.pk]))]
    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        assert wallet.address in html
        assert wallet.encrypted_key not in html and key not in html and key[2:] not in html
        assert "encrypted_key" not in html
    assert staff.get(reverse("admin:marketplace_wallet_add")).status_code == 403


@pytest.mark.parametrize("model", ["chaintransaction", "escrow", "settlement", "chaincontract",
                                   "chainaccount", "chaincursor", "wallet"])
def test_payment_pages_load_and_are_read_only(staff, consumer_wallet, healthcare, provider_org, model,
                                              committed):
    job = _funded_job(healthcare, committed)
    settlement = Settlement.objects.create(job=job, charged=Decimal("1"), fee=Decimal("0.05"),
                                           refunded=Decimal("9"), statement=[{"node": "n1"}],
                                           transaction=ChainTransaction.objects.filter(purpose="fund").first())
    Payout.objects.create(settlement=settlement, provider=provider_org, address=consumer_wallet.address,
                          amount=Decimal("0.95"))
    changelist = staff.get(reverse(f"admin:marketplace_{model}_changelist"))
    assert changelist.status_code == 200
    rows = changelist.context["cl"].result_list
    assert len(rows) >= 1
    change = staff.get(reverse(f"admin:marketplace_{model}_change", args=[rows[0].pk]))
    assert change.status_code == 200
    assert 'type="submit" value="Save"' not in change.content.decode()
    assert staff.get(reverse(f"admin:marketplace_{model}_add")).status_code == 403
    if model == "settlement":
        assert "0.95 tUSD" in change.content.decode()  # the payout inline
        assert consumer_wallet.address in change.content.decode()


def test_chain_transactions_filter_by_status_and_purpose(staff, consumer_wallet, healthcare, committed):
    _funded_job(healthcare, committed)
    url = reverse("admin:marketplace_chaintransaction_changelist")
    funds = staff.get(url, {"purpose": "fund"}).context["cl"].result_list
    assert [t.purpose for t in funds] == ["fund"]
    assert staff.get(url, {"status": "reverted"}).context["cl"].result_count == 0
    page = staff.get(url).content.decode()
    assert funds[0].tx_hash[:18] in page and funds[0].raw not in page


def test_a_settled_row_without_a_batch_shows_the_transaction_that_closed_the_escrow(
        staff, consumer_wallet, healthcare, committed):
    # Closed on chain by a transaction the platform did not send as a batch (e.g. a withdrawal
    # after the deadline): the indexer marks the pending statement settled with no batch
    # transaction; its row shows the escrow's closing transaction, not "—".
    job = _funded_job(healthcare, committed)
    Settlement.objects.create(job=job, charged=Decimal("1"), fee=Decimal("0.05"), refunded=Decimal("9"),
                              statement=[])
    tx_hash = "0x" + "ab" * 32
    escrow_events.escrow_closed(key=Escrow.objects.get(job=job).key, refunded=False, paid=950_000, fee=50_000,
                           returned=9 * 10**6, tx_hash=tx_hash)
    assert Settlement.objects.get(job=job).status == Settlement.Status.SETTLED
    listed = staff.get(reverse("admin:marketplace_settlement_changelist")).content.decode()
    page = staff.get(reverse("admin:marketplace_settlement_change",
                             args=[Settlement.objects.get(job=job).pk])).content.decode()
    for html in (listed, page):
        assert tx_hash[:18] in html
