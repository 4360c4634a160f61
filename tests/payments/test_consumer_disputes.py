"""A consumer disputes a finished job (the job page's form, the API), and staff resolve it
in the admin through services/disputes.py: refund (minted back on the development chain
once settled), slash (a Dispute per provider for the staking service), or reject."""

from __future__ import annotations

import pytest
from django.urls import reverse

from marketplace.errors import Conflict, MarketError, PermissionDenied
from marketplace.models import AuditEvent, ChainTransaction, ConsumerDispute, Dispute, Job, Settlement
from marketplace.services import disputes

from .support import committed, funded_job, units
from .test_account import settled  # noqa: F401  (the fixture: a job funded, run and settled)

pytestmark = pytest.mark.django_db
REASON = "The model's accuracy is far below what the verification report claims."


def test_the_owner_disputes_a_settled_job_from_its_page(client, alice, settled):  # noqa: F811
    client.force_login(alice)
    page = client.get(f"/jobs/{settled.pk}/").content.decode()
    assert 'data-testid="dispute-form"' in page
    short = client.post(f"/jobs/{settled.pk}/dispute/", {"reason": "bad"}, follow=True).content.decode()
    assert "at least 10 characters" in short and not ConsumerDispute.objects.exists()
    done = client.post(f"/jobs/{settled.pk}/dispute/", {"reason": REASON + "\x00\u202e"}, follow=True)
    dispute = ConsumerDispute.objects.get()
    assert dispute.reason == REASON and dispute.opened_by == alice  # control characters removed
    page = done.content.decode()
    assert f"Dispute #{dispute.pk} opened" in page and 'data-testid="dispute-form"' not in page
    assert settled.events.filter(reason="consumer_dispute_opened").exists()


def test_the_api_opens_and_lists_disputes_and_refuses_a_second_one(api, alice, settled):  # noqa: F811
    url = f"/api/v1/jobs/{settled.pk}/disputes/"
    created = api.as_user(alice).post(url, {"reason": REASON}, format="json")
    assert created.status_code == 201 and created.json()["status"] == "open"
    again = api.as_user(alice).post(url, {"reason": REASON}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "dispute_open"
    assert [d["id"] for d in api.as_user(alice).get(url).json()] == [created.json()["id"]]
    assert api.as_user(alice).post(url, {"reason": ""}, format="json").status_code == 400


def test_another_organization_cannot_see_or_open_a_dispute(api, client, bob, carol, settled):  # noqa: F811
    url = f"/api/v1/jobs/{settled.pk}/disputes/"
    assert api.as_user(bob).post(url, {"reason": REASON}, format="json").status_code == 404
    assert api.as_user(bob).get(url).status_code == 404
    assert api.as_user(carol).post(url, {"reason": REASON}, format="json").status_code == 403
    client.force_login(bob)
    assert client.post(f"/jobs/{settled.pk}/dispute/", {"reason": REASON}).status_code == 404
    with pytest.raises(PermissionDenied):
        disputes.consumer_dispute_open(job=settled, actor=bob, reason=REASON)
    assert not ConsumerDispute.objects.exists()


def test_only_a_finished_job_is_disputed(alice, healthcare, wallets):
    job = funded_job(healthcare)
    with pytest.raises(Conflict) as refused:
        disputes.consumer_dispute_open(job=job, actor=alice, reason=REASON)
    assert refused.value.code == "not_disputable"


def test_staff_refund_a_settled_job_what_it_was_charged(alice, admin_user, settled, wallets):  # noqa: F811
    charged = Settlement.objects.get(job=settled).charged
    consumer = settled.escrow.consumer_address
    before = wallets.balance(consumer)
    dispute = disputes.consumer_dispute_open(job=settled, actor=alice, reason=REASON)
    with committed():
        done = disputes.consumer_dispute_refund(dispute=dispute, actor=admin_user, note="Metric misreported.")
    tx = ChainTransaction.objects.get(tx_hash=done.refund_tx)
    from marketplace.chain import sender
    sender.wait(tx)
    assert done.status == "refunded" and done.refund_amount == charged and done.resolved_by == admin_user
    assert wallets.balance(consumer) == before + units(charged)
    assert AuditEvent.objects.filter(action="consumer_dispute.refunded").exists()
    with pytest.raises(Conflict):  # once
        disputes.consumer_dispute_refund(dispute=dispute, actor=admin_user)


def test_staff_slash_the_provider_or_reject_in_the_admin(client, alice, admin_user, settled):  # noqa: F811
    client.force_login(admin_user)
    url = reverse("admin:marketplace_consumerdispute_changelist")
    first = disputes.consumer_dispute_open(job=settled, actor=alice, reason=REASON)
    with committed():
        page = client.post(url, {"action": "slash", "_selected_action": [first.pk]}, follow=True)
    assert "Slash queued for: #" in page.content.decode()
    first.refresh_from_db()
    slash = Dispute.objects.get(reason=Dispute.Reason.CONSUMER_CLAIM)
    assert first.status == "slashed" and slash.attributed
    assert slash.provider == settled.assignments.get().node.provider
    second = disputes.consumer_dispute_open(job=settled, actor=alice, reason=REASON + " Again.")
    client.post(url, {"action": "reject", "_selected_action": [second.pk]}, follow=True)
    second.refresh_from_db()
    assert second.status == "rejected" and second.resolved_by == admin_user
    refused = client.post(url, {"action": "refund", "_selected_action": [second.pk]}, follow=True)
    page = refused.content.decode()
    assert "Not done" in page and "rejected already" in page
    assert Job.objects.get(pk=settled.pk).events.filter(reason="consumer_dispute_rejected").exists()


def test_a_reason_is_required(alice, settled):  # noqa: F811
    with pytest.raises(MarketError) as refused:
        disputes.consumer_dispute_open(job=settled, actor=alice, reason="\x00\x01  \n")
    assert refused.value.field == "reason"
