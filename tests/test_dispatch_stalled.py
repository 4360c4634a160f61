"""A worker killed between placing a job and sending its dispatch leaves the assignment
pending; the periodic pass sends it (once), and leaves alone what is still on its way and
ranks that wait for rank 0's rendezvous."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.models import Assignment, Job
from marketplace.services import execution

from .factories import JobFactory

pytestmark = pytest.mark.django_db
S, A = Job.Status, Assignment.Status


def pending(job, node, offer, *, rank=0, age_s=0) -> Assignment:
    a = Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=rank, gpus=1,
                                  price_per_gpu_hour=Decimal("1.50"), status=A.PENDING)
    Assignment.objects.filter(pk=a.pk).update(created_at=timezone.now() - timedelta(seconds=age_s))
    return a


def test_a_placement_whose_dispatch_was_lost_is_sent_once(carol_node, carol_offer):
    stalled = pending(JobFactory(status=S.MATCHING, attempt=1), carol_node, carol_offer, age_s=60)
    fresh = pending(JobFactory(status=S.MATCHING, attempt=1), carol_node, carol_offer)
    assert execution.assignments_dispatch_stalled() == 1
    assert execution.assignments_dispatch_stalled() == 0
    stalled.refresh_from_db()
    fresh.refresh_from_db()
    assert stalled.status == A.DISPATCHED and stalled.dispatched_at is not None
    assert fresh.status == A.PENDING


def test_a_later_rank_waits_for_rank_zeros_rendezvous(carol_node, carol_offer, dave_node, dave_offer):
    job = JobFactory(status=S.MATCHING, attempt=1, nodes=2)
    rank0 = pending(job, carol_node, carol_offer, age_s=60)
    Assignment.objects.filter(pk=rank0.pk).update(status=A.ACCEPTED)
    rank1 = pending(job, dave_node, dave_offer, rank=1, age_s=60)
    assert execution.assignments_dispatch_stalled() == 0  # rank 0 has no rendezvous yet
    Assignment.objects.filter(pk=rank0.pk).update(rdzv_host="10.0.0.1", rdzv_port=29500)
    assert execution.assignments_dispatch_stalled() == 1
    rank1.refresh_from_db()
    assert rank1.status == A.DISPATCHED
