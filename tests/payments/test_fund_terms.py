"""The escrow is bound to the job's terms through the platform's real entry points (issue 12,
items 1 and 2): `fund-calls` carries the operator's signature of (job key, the owner's
wallet, the budget, the job's reclaim deadline), the contract takes no other caller, amount
or deadline, and the indexer accepts a JobFunded only on those terms.

Before the terms were bound each attack here succeeded: the consumer funded with a deadline
60 s away (and could refund once served); a stranger's copy of the owner's pending fund
call, or its own 1-unit funding of the job key, made the stranger the escrow's consumer and
the owner was told to top that escrow up."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.chain import deploy, indexer
from marketplace.models import AuditEvent, Escrow, Job, Wallet
from marketplace.services import funding

from .support import submitted_job, units

pytestmark = pytest.mark.django_db
S = Job.Status


@pytest.fixture
def holder(wallets, healthcare) -> str:
    """A browser wallet alice's organization linked, holding 200 tUSD."""
    account = wallets.w3.eth.accounts[5]
    deploy.mint_to(account, Decimal("200"))
    Wallet.objects.create(organization=healthcare, address=account, kind=Wallet.Kind.EXTERNAL)
    return account


@pytest.fixture
def mallory(wallets) -> str:
    """A stranger on the chain with money and an allowance: only the terms stop it."""
    account = wallets.w3.eth.accounts[7]
    deploy.mint_to(account, Decimal("50"))
    wallets.transact(account, wallets.token.functions.approve(wallets.escrow.address, units("50")))
    return account


def send(chain, sender: str, call: dict) -> int:
    """Sends a {to, data} call as a wallet does; returns the receipt's status."""
    tx = chain.w3.eth.send_transaction({"from": sender, "to": call["to"], "data": call["data"],
                                        "gas": 500_000})
    return chain.w3.eth.get_transaction_receipt(tx)["status"]


def fund_calls(api, user, job: Job, address: str | None = None):
    query = {"address": address} if address else {}
    return api.as_user(user).get(f"/api/v1/jobs/{job.pk}/fund-calls/", query)


def own_fund(chain, calls: dict, *, amount: int | None = None, deadline: int | None = None) -> dict:
    """The fund call with the platform's signature but the sender's own amount or deadline."""
    args = [bytes.fromhex(calls["job_key"][2:]), amount or int(calls["amount_units"]),
            deadline or calls["deadline"], bytes.fromhex(calls["signature"][2:])]
    return {"to": chain.escrow.address, "data": chain.escrow.encode_abi("fund", args=args)}


def test_a_consumer_cannot_fund_its_job_with_a_short_deadline(api, alice, healthcare, wallets, holder):
    job = submitted_job(healthcare, budget="80")
    calls = fund_calls(api, alice, job).data
    assert calls["deadline"] == int(funding.reclaim_deadline(job).timestamp())
    send(wallets, holder, calls["approve"])

    short = wallets.now() + 60
    assert send(wallets, holder, own_fund(wallets, calls, deadline=short)) == 0
    assert send(wallets, holder, own_fund(wallets, calls, amount=1)) == 0
    assert indexer.index_events() == 0
    job.refresh_from_db()
    assert job.status == S.SUBMITTED

    assert send(wallets, holder, calls["fund"]) == 1
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.FUNDED
    assert job.escrow.deadline == funding.reclaim_deadline(job).replace(microsecond=0)
    # Served, the consumer cannot take the deposit back a minute later.
    wallets.travel_to(short + 1)
    refund = wallets.escrow.functions.refund(bytes.fromhex(calls["job_key"][2:]))
    assert wallets.transact(holder, refund)["status"] == 0


def test_a_front_runner_cannot_take_the_job_or_the_owners_money(api, alice, bob, healthcare, wallets, holder,
                                                               mallory):
    job = submitted_job(healthcare, budget="100")
    calls = fund_calls(api, alice, job, holder).data
    send(wallets, holder, calls["approve"])

    # The stranger sees the owner's fund call pending and sends it first, then 1 unit with
    # the owner's signature; nor does the platform sign anything for it.
    assert send(wallets, mallory, calls["fund"]) == 0
    assert send(wallets, mallory, own_fund(wallets, calls, amount=1)) == 0
    assert fund_calls(api, bob, job, mallory).status_code == 404  # not bob's job
    assert fund_calls(api, alice, job, mallory).data["code"] == "not_your_wallet"
    assert wallets.escrow_of(calls["job_key"])[3] == 0  # None: nobody took the key

    assert send(wallets, holder, calls["fund"]) == 1
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert (job.status, job.escrow.consumer_address, job.escrow.amount) == (S.FUNDED, holder, 100)
    key = bytes.fromhex(calls["job_key"][2:])
    assert wallets.transact(mallory, wallets.escrow.functions.topUp(key, 1))["status"] == 0
    wallets.travel_to(int(job.escrow.deadline.timestamp()))
    assert wallets.transact(mallory, wallets.escrow.functions.refund(key))["status"] == 0
    assert wallets.balance(mallory) == units("50")
    assert wallets.transact(holder, wallets.escrow.functions.refund(key))["status"] == 1
    assert wallets.balance(holder) == units("200")


def test_a_funding_off_the_jobs_terms_is_foreign_and_never_a_top_up_target(api, alice, healthcare, wallets,
                                                                          holder, mallory):
    """Terms were signed for a wallet the organization then unlinked, and its holder funds:
    the deposit is recorded as foreign (staff's audit trail, the timeline), never as the
    escrow's consumer, and the owner funds afresh under a new key."""
    job = submitted_job(healthcare, budget="30")
    Wallet.objects.create(organization=healthcare, address=mallory, kind=Wallet.Kind.EXTERNAL)
    stale = fund_calls(api, alice, job, mallory).data
    Wallet.objects.filter(address=mallory).delete()
    assert send(wallets, mallory, stale["fund"]) == 1  # operator-signed: the contract takes it

    assert indexer.index_events() == 1
    job.refresh_from_db()
    escrow = Escrow.objects.get(job=job)
    assert job.status == S.SUBMITTED
    assert (escrow.status, escrow.consumer_address, escrow.amount) == ("unfunded", "", 0)
    assert escrow.key != stale["job_key"]
    (audit,) = AuditEvent.objects.filter(action="escrow.foreign_funding", object_id=str(job.pk))
    assert audit.data["consumer"] == mallory and audit.data["key"] == stale["job_key"]
    assert "not one of" in job.events.get(reason="escrow_foreign").message

    calls = fund_calls(api, alice, job, holder).data
    assert (calls["kind"], calls["job_key"], calls["amount"]) == ("fund", escrow.key, "30.000000")
    send(wallets, holder, calls["approve"])
    assert send(wallets, holder, calls["fund"]) == 1
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert (job.status, job.escrow.consumer_address) == (S.FUNDED, holder)
    assert indexer.index_events() == 0  # idempotent: nothing recorded twice
    assert AuditEvent.objects.filter(action="escrow.foreign_funding").count() == 1


def test_a_funding_with_another_deadline_is_foreign(api, alice, healthcare, wallets, holder):
    """Even an operator-signed deadline other than the job's (a signature issued in error) does
    not start the job."""
    job = submitted_job(healthcare, budget="20")
    calls = fund_calls(api, alice, job, holder).data
    short = wallets.now() + 3600
    signature = deploy.fund_terms_signature(job_key=calls["job_key"], consumer=holder, amount=units("20"),
                                            deadline=short)
    send(wallets, holder, calls["approve"])
    funded = wallets.transact(holder, wallets.escrow.functions.fund(
        bytes.fromhex(calls["job_key"][2:]), units("20"), short, bytes.fromhex(signature[2:])))
    assert funded["status"] == 1
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.SUBMITTED and job.escrow.status == "unfunded"
    assert "deadline" in job.events.get(reason="escrow_foreign").message


def test_only_the_funding_wallet_is_asked_to_top_up(api, alice, healthcare, wallets, holder):
    job = submitted_job(healthcare, budget="40")
    calls = fund_calls(api, alice, job, holder).data
    assert api.as_user(alice).post(f"/api/v1/jobs/{job.pk}/budget/", {"budget": "60"}).status_code == 200
    send(wallets, holder, calls["approve"])
    assert send(wallets, holder, calls["fund"]) == 1
    indexer.index_events()

    custodial = healthcare.wallets.get(kind=Wallet.Kind.CUSTODIAL).address
    other = fund_calls(api, alice, job, custodial)
    assert other.status_code == 409 and other.data["code"] == "not_the_funding_wallet"
    top_up = fund_calls(api, alice, job, holder).data
    assert (top_up["kind"], top_up["amount"]) == ("top_up", "20.000000")
