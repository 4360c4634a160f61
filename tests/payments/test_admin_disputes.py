"""Django admin for trust: the disputes list with its slash and dismiss actions (through the
staking service), and the stakes, view-only."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from marketplace.chain import deploy, indexer, sender
from marketplace.models import AuditEvent, Dispute, ProviderStake
from marketplace.services import enqueue, staking
from workers.tasks_chain import dispute_slash

from .support import assignment, committed, funded_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def queued(monkeypatch) -> list[tuple]:
    """The tasks the admin asked Celery for (run by hand below)."""
    asked: list[tuple] = []
    monkeypatch.setattr(enqueue, "enqueue", lambda task, *args, **kw: asked.append((task, *args)))
    return asked


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def disputes(wallets, provider_org, healthcare, carol_node):
    deploy.mint_to(provider_org.wallets.get().address, Decimal("100"))
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="100")
    sender.wait(op.transaction)
    indexer.index_events()
    out = []
    for _ in range(2):
        job = funded_job(healthcare, budget="20")
        a = assignment(job, carol_node, minutes=30)
        out.append(Dispute.objects.create(job=job, assignment=a, provider=provider_org,
                                          reason=Dispute.Reason.METRIC_INFLATED))
    return out


def test_the_slash_action_queues_the_chain_task_which_slashes_once(staff, disputes, queued):
    first, second = disputes
    page = staff.get(reverse("admin:marketplace_dispute_changelist"))
    assert page.status_code == 200 and f">{first.pk}<" in page.content.decode()
    response = staff.post(reverse("admin:marketplace_dispute_changelist"),
                          {"action": "slash", "_selected_action": [first.pk]}, follow=True)
    assert queued == [("workers.tasks_chain.dispute_slash", first.pk)]
    assert any("Slash queued" in m for m in _messages(response))
    assert dispute_slash(first.pk) == "slashed"
    assert dispute_slash(first.pk) == "slashed"
    first.refresh_from_db()
    assert first.status == "slashed" and first.slash_amount == Decimal("1.2")
    assert ProviderStake.objects.get().staked == Decimal("98.8")
    # A slashed dispute cannot be dismissed; an open one can, and is never slashed after.
    response = staff.post(reverse("admin:marketplace_dispute_changelist"),
                          {"action": "dismiss", "_selected_action": [first.pk, second.pk]}, follow=True)
    messages = " ".join(_messages(response))
    assert f"Dismissed #{second.pk}" in messages
    assert f"#{first.pk}: Dispute #{first.pk} is stake slashed" in messages
    assert AuditEvent.objects.filter(action="dispute.dismiss", object_id=str(second.pk)).exists()
    assert dispute_slash(second.pk) == "dismissed"
    assert ProviderStake.objects.get().staked == Decimal("98.8")


def test_stakes_are_view_only(staff, disputes):
    stake = ProviderStake.objects.get()
    assert staff.get(reverse("admin:marketplace_providerstake_changelist")).status_code == 200
    assert staff.get(reverse("admin:marketplace_providerstake_change", args=[stake.pk])).status_code == 200
    assert staff.get(reverse("admin:marketplace_providerstake_add")).status_code == 403
    detail = staff.get(reverse("admin:marketplace_dispute_change", args=[disputes[0].pk]))
    assert detail.status_code == 200 and b"Save" not in detail.content
