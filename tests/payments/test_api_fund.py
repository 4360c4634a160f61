"""POST /api/v1/jobs/{id}/fund/: the consumer funds a job's escrow from its organization's
custodial (development) wallet; the job starts once the indexer has seen `JobFunded`."""

from __future__ import annotations

import pytest

from marketplace.chain import client, deploy, indexer, sender
from marketplace.models import ChainTransaction, Escrow, Job
from marketplace.services import enqueue
from workers.tasks import match_job

from ..chain_node import free_port
from .support import committed, move, submitted_job, units

pytestmark = pytest.mark.django_db
S = Job.Status
FUNDED_STATE = 1  # JobEscrow.State.Funded


def fund(api, user, job_id: int, body: dict | None = None):
    with committed():
        return api.as_user(user).post(f"/api/v1/jobs/{job_id}/fund/", body or {}, format="json")


def sent(purpose: str) -> int:
    return ChainTransaction.objects.filter(purpose=purpose).count()


@pytest.fixture
def matches(monkeypatch) -> list[int]:
    """The jobs the payment code asked Celery to match (the task itself is run by hand)."""
    asked: list[int] = []
    monkeypatch.setattr(enqueue, "match_job", asked.append)
    return asked


def test_funding_from_the_custodial_wallet_starts_the_job_once_the_chain_says_so(
        api, alice, healthcare, wallets, matches):
    job = submitted_job(healthcare, budget="120")
    wallet = healthcare.wallets.get()
    before = wallets.balance(wallet.address)

    r = fund(api, alice, job.pk, {"amount": "120.00"})

    assert r.status_code == 200, r.data
    assert r.data["status"] == "submitted"  # the chain has it; the platform has not read it yet
    assert r.data["escrow"]["status"] == "funding"
    key = r.data["escrow"]["job_key"]
    consumer, amount, _deadline, state = wallets.escrow_of(key)
    assert (consumer, amount, state) == (wallet.address, units("120"), FUNDED_STATE)
    assert wallets.balance(wallet.address) == before - units("120")
    assert matches == []

    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.FUNDED and matches == [job.pk]
    escrow = Escrow.objects.get(job=job)
    assert (escrow.status, escrow.amount, escrow.consumer_address) == ("funded", 120, wallet.address)
    match_job(job.pk)  # what the enqueued task does
    job.refresh_from_db()
    assert job.status == S.MATCHING
    reasons = list(job.events.values_list("reason", flat=True))
    assert [r for r in reasons if r in ("funding_sent", "escrow_funded", "matching")] == [
        "funding_sent", "escrow_funded", "matching"]
    detail = api.as_user(alice).get(f"/api/v1/jobs/{job.pk}/").data
    assert detail["escrow"]["status"] == "funded" and detail["escrow"]["amount"] == "120.000000"


def test_a_retried_fund_call_sends_nothing_twice(api, alice, healthcare, wallets, matches):
    job = submitted_job(healthcare, budget="50")

    first, again = fund(api, alice, job.pk), fund(api, alice, job.pk)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.data["escrow"]["job_key"] == first.data["escrow"]["job_key"]
    assert (sent("approve"), sent("fund")) == (1, 1)
    indexer.index_events()
    after_indexing = fund(api, alice, job.pk)

    assert after_indexing.status_code == 200 and after_indexing.data["escrow"]["status"] == "funded"
    assert (sent("approve"), sent("fund")) == (1, 1)
    assert wallets.escrow_of(first.data["escrow"]["job_key"])[1] == units("50")
    assert Job.objects.get(pk=job.pk).events.filter(reason="escrow_funded").count() == 1
    assert matches == [job.pk]


def test_a_wrong_amount_is_refused_with_the_budget_in_the_message(api, alice, healthcare, wallets):
    job = submitted_job(healthcare, budget="80")
    r = fund(api, alice, job.pk, {"amount": "79.99"})
    assert r.status_code == 400
    assert r.data["field"] == "amount" and "80.00 tUSD" in r.data["detail"]
    assert sent("approve") + sent("fund") == 0


def test_an_unknown_job_is_not_found(api, alice, wallets):
    assert fund(api, alice, 987654).status_code == 404


def test_another_organizations_job_is_not_found(api, bob, healthcare, wallets):
    job = submitted_job(healthcare)
    r = fund(api, bob, job.pk)
    assert r.status_code == 404
    assert sent("approve") + sent("fund") == 0 and not Escrow.objects.filter(job=job).exists()


def test_a_provider_may_not_fund(api, carol, healthcare, wallets):
    job = submitted_job(healthcare)
    assert fund(api, carol, job.pk).status_code == 403


def test_only_a_submitted_job_is_funded(api, alice, healthcare, wallets):
    job = move(submitted_job(healthcare), S.CANCELLED)
    r = fund(api, alice, job.pk)
    assert r.status_code == 409 and "cancelled" in r.data["detail"]
    assert sent("approve") + sent("fund") == 0


def test_funding_is_refused_while_the_escrow_is_disabled(api, alice, healthcare, wallets, settings):
    settings.ESCROW_ENABLED = False
    job = submitted_job(healthcare)
    r = fund(api, alice, job.pk)
    assert r.status_code == 409 and "not enabled" in r.data["detail"]


def test_a_chain_node_that_is_down_answers_503_and_nothing_is_funded(api, alice, healthcare, wallets,
                                                                      settings):
    job = submitted_job(healthcare)
    settings.CHAIN_RPC_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.CHAIN_RPC_TIMEOUT_S = 2

    r = fund(api, alice, job.pk)

    assert r.status_code == 503, r.data
    assert r.data["code"] == "chain_unavailable" and "does not answer" in r.data["detail"]
    assert not Escrow.objects.filter(job=job).exclude(status="unfunded").exists()
    assert sent("approve") + sent("fund") == 0
    assert Job.objects.get(pk=job.pk).status == S.SUBMITTED
    settings.CHAIN_RPC_URL = ""
    assert client.w3().eth.chain_id  # the in-process chain is still there for the next test


def test_a_funding_that_reverted_on_chain_can_be_sent_again(api, alice, healthcare, wallets):
    """The escrow was paused when the fund transaction was mined (an incident): it reverted.
    Once unpaused, funding again must work instead of answering "funding" for ever."""
    job = submitted_job(healthcare, budget="40")
    with committed():  # the operator holds the pauser role on development chains
        sender.send(key=deploy.operator_key(), purpose="settle", call=wallets.escrow.functions.pause())
    first = fund(api, alice, job.pk)
    assert first.status_code == 200 and first.data["escrow"]["status"] == "funding"
    reverted = ChainTransaction.objects.get(purpose="fund")
    assert sender.check(reverted).status == "reverted"
    with committed():
        sender.send(key=deploy.operator_key(), purpose="settle", call=wallets.escrow.functions.unpause())

    again = fund(api, alice, job.pk)

    assert again.status_code == 200, again.data
    assert ChainTransaction.objects.filter(purpose="fund").count() == 2
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.FUNDED and Escrow.objects.get(job=job).amount == 40
