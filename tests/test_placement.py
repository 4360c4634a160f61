"""Placement: the cheapest fitting nodes, atomic reservations, never a double booking."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from marketplace.models import Assignment, Checkpoint, Job, Offer
from marketplace.selectors.exclusions import nodes_excluded
from marketplace.services import batch_placement, placement
from marketplace.services.execution import node_lost
from marketplace.services.nodes import node_set_presence

from .factories import JobFactory, NodeFactory, OfferFactory

S = Job.Status


def cpu_offer(price: str, slots: int = 2) -> Offer:
    node = NodeFactory(gpu_model="cpu", gpu_memory_gb=0, gpu_count=slots)
    return OfferFactory(node=node, price_per_gpu_hour=Decimal(price), gpus_offered=slots)


def funded_job(**kw) -> Job:
    return JobFactory(status=S.FUNDED, gpu_models=["cpu"], gpus_per_node=2, **kw)


def test_places_on_the_cheapest_nodes_and_locks_prices(db):
    cpu_offer("0.30")
    cheap = cpu_offer("0.10")
    mid = cpu_offer("0.20")
    job = funded_job(nodes=2)
    assignments = placement.job_place(job_id=job.pk)
    assert [(a.node_rank, a.offer_id, a.price_per_gpu_hour) for a in assignments] == [
        (0, cheap.pk, Decimal("0.100000")), (1, mid.pk, Decimal("0.200000"))]
    job.refresh_from_db()
    assert job.status == S.MATCHING and job.attempt == 1
    assert Offer.objects.get(pk=cheap.pk).gpus_reserved == 2
    assert job.events.filter(reason="placed").exists()


def test_waits_with_reasons_and_does_not_repeat_them(db):
    cpu_offer("0.50")
    job = funded_job(nodes=1, max_price_per_gpu_hour=Decimal("0.10"))
    assert placement.job_place(job_id=job.pk) == []
    assert placement.job_place(job_id=job.pk) == []
    notes = job.events.filter(reason="no_match")
    assert notes.count() == 1 and "0.50" in notes.get().message
    assert Job.objects.get(pk=job.pk).status == S.MATCHING


def test_placing_twice_is_harmless(db):
    cpu_offer("0.10")
    job = funded_job(nodes=1)
    assert len(placement.job_place(job_id=job.pk)) == 1
    assert placement.job_place(job_id=job.pk) == []
    assert Assignment.objects.filter(job=job).count() == 1


def test_a_lost_node_frees_its_gpus_and_is_not_used_again(db):
    offer = cpu_offer("0.10")
    spare = cpu_offer("0.20")
    job = funded_job(nodes=1)
    (a,) = placement.job_place(job_id=job.pk)
    Job.objects.filter(pk=job.pk).update(status=S.RUNNING)
    Assignment.objects.filter(pk=a.pk).update(status=Assignment.Status.RUNNING)
    assert node_lost(node_id=offer.node_id) == 1
    job.refresh_from_db()
    assert job.status == S.INTERRUPTED and job.excluded_nodes == [offer.node_id]
    assert Offer.objects.get(pk=offer.pk).gpus_reserved == 0
    (b,) = placement.job_place(job_id=job.pk)
    assert b.offer_id == spare.pk and b.attempt == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_matching_never_double_books():
    offers = [cpu_offer(f"0.{i + 1}0") for i in range(3)]
    jobs = [funded_job(nodes=1) for _ in range(10)]
    barrier = threading.Barrier(len(jobs))
    errors = []

    def place(job_id):
        try:
            barrier.wait()
            placement.job_place(job_id=job_id)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=place, args=(j.pk,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a racing thread is stuck (a lock never released?)"
    assert errors == []
    assert Assignment.objects.count() == 3  # three offers of 2 slots, jobs of 2 slots
    assert not Offer.objects.filter(gpus_reserved__gt=F("gpus_offered")).exists()
    assert sorted(Assignment.objects.values_list("offer_id", flat=True)) == sorted(o.pk for o in offers)
    # Rerunning the losers once capacity is gone changes nothing.
    for job in jobs:
        placement.job_place(job_id=job.pk)
    assert Assignment.objects.count() == 3


def test_new_or_resumed_offers_retry_waiting_jobs_once(db, django_capture_on_commit_callbacks, monkeypatch,
                                                       carol_node, provider_org):
    from django.core.cache import cache

    from marketplace.services.offers import OfferSpec, offer_create, offer_set_status

    sent = []
    monkeypatch.setattr("celery.current_app.send_task", lambda name, **kw: sent.append(name))
    cache.delete("computemesh:rematch-scheduled")
    with django_capture_on_commit_callbacks(execute=True):
        first = offer_create(provider=provider_org, node=carol_node,
                             spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal("1")))
        offer_create(provider=provider_org, node=carol_node,
                     spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal("1.1")))
    assert sent == ["workers.tasks.rematch_waiting"]  # debounced
    cache.delete("computemesh:rematch-scheduled")
    with django_capture_on_commit_callbacks(execute=True):
        offer_set_status(provider=provider_org, offer=first, status="paused")
    assert len(sent) == 1  # pausing frees nothing
    with django_capture_on_commit_callbacks(execute=True):
        offer_set_status(provider=provider_org, offer=first, status="active")
    assert sent == ["workers.tasks.rematch_waiting"] * 2


def test_the_batch_matcher_serves_equal_jobs_oldest_first_at_the_lowest_price(db):
    from marketplace import catalogue
    from marketplace.services.batch_placement import jobs_place_waiting

    cheap = cpu_offer("0.10")
    dear = cpu_offer("0.30")
    first = funded_job(nodes=1)
    second = funded_job(nodes=1)
    third = funded_job(nodes=1)  # nothing left for it
    placed = jobs_place_waiting()
    assert set(placed) == {first.pk, second.pk}
    by_job = {a.job_id: a.offer_id for a in Assignment.objects.all()}
    assert by_job == {first.pk: cheap.pk, second.pk: dear.pk}
    assert set(Offer.objects.values_list("gpus_reserved", flat=True)) == {2}
    third.refresh_from_db()
    assert third.status == S.MATCHING and third.attempt == 0
    assert [e.reason for e in Job.objects.get(pk=first.pk).events.all()] == ["matching", "placed"]
    assert Job.objects.get(pk=first.pk).attempt == 1
    # Constraints: a GPU job never lands on CPU slots; region and verified tags count.
    gpu = NodeFactory(gpu_model="A100 80GB", region="US-TX",
                      compliance_claimed=catalogue.compliance_mask(["hipaa"]),
                      compliance_verified=catalogue.compliance_mask(["hipaa"]))
    us = OfferFactory(node=gpu, price_per_gpu_hour=Decimal("1.5"))
    eu_job = JobFactory(status=S.FUNDED, regions=["EU"])
    hipaa_job = JobFactory(status=S.FUNDED, regions=["US"], compliance=["hipaa"], gpus_per_node=2)
    placed = jobs_place_waiting()
    assert set(placed) == {hipaa_job.pk}
    assert Assignment.objects.get(job=hipaa_job).offer_id == us.pk
    assert not Assignment.objects.filter(job=eu_job).exists()


def test_the_batch_matcher_agrees_with_the_quote(db):
    from marketplace.services.batch_placement import jobs_place_waiting
    from marketplace.services.matching import quote_job

    for price in ("0.40", "0.15", "0.25", "0.35"):
        cpu_offer(price)
    job = funded_job(nodes=3)
    expected = [c.offer_id for c in quote_job(spec=placement.spec_of(job)).candidates]
    jobs_place_waiting()
    got = list(Assignment.objects.filter(job=job).order_by("node_rank").values_list("offer_id", flat=True))
    assert got == expected and len(got) == 3


def test_the_batch_matcher_places_the_largest_jobs_first(db):
    from marketplace.services.batch_placement import jobs_place_waiting

    cheap_big = cpu_offer("0.10", slots=4)
    small_only = cpu_offer("0.20", slots=2)
    small = funded_job(nodes=1)  # 2 slots, submitted first
    big = JobFactory(status=S.FUNDED, gpu_models=["cpu"], gpus_per_node=4)
    jobs_place_waiting()
    # First come, first served would give the small job the big offer and leave the big one
    # waiting; largest first places both.
    assert Assignment.objects.get(job=big).offer_id == cheap_big.pk
    assert Assignment.objects.get(job=small).offer_id == small_only.pk


@pytest.mark.parametrize("matcher", ["job_place", "batch"])
def test_a_consumer_s_own_nodes_are_never_placed_on_its_jobs(db, matcher):
    """Issue 12, item 5: an organization that is both consumer and provider could land as a
    node of its own job, corrupt its share of the gradients and have an honest peer blamed.
    Its own offers are left out even when they are the cheapest."""
    from marketplace.services.batch_placement import jobs_place_waiting

    own = cpu_offer("0.05")
    other = cpu_offer("0.20")
    job = funded_job(nodes=1, owner=own.provider)
    place = (lambda: placement.job_place(job_id=job.pk)) if matcher == "job_place" else jobs_place_waiting
    place()
    assert list(Assignment.objects.filter(job=job).values_list("offer_id", flat=True)) == [other.pk]
    # With only its own offer left, the job waits rather than run on it.
    second = funded_job(nodes=1, owner=own.provider)
    place = (lambda: placement.job_place(job_id=second.pk)) if matcher == "job_place" else jobs_place_waiting
    place()
    assert not Assignment.objects.filter(job=second).exists()
    assert Offer.objects.get(pk=own.pk).gpus_reserved == 0


def _run_and_lose(job: Job) -> Assignment:
    """Place the one-node job, let it run, and lose its node (heartbeats stopped)."""
    (a,) = placement.job_place(job_id=job.pk)
    Job.objects.filter(pk=job.pk).update(status=S.RUNNING)
    Assignment.objects.filter(pk=a.pk).update(status=Assignment.Status.RUNNING)
    assert node_lost(node_id=a.node_id) == 1
    return a


def _age_losses(job: Job, seconds: int) -> None:
    """The losses happened `seconds` ago, and the lost nodes' agents are connected again."""
    lost = Assignment.objects.filter(job=job, status=Assignment.Status.LOST)
    lost.update(finished_at=timezone.now() - timedelta(seconds=seconds))
    for node_id in set(lost.values_list("node_id", flat=True)):
        node_set_presence(node_id=node_id, online=True, heartbeat_at=timezone.now())


@pytest.mark.parametrize("place", ["job_place", "batch"])
def test_a_node_lost_once_takes_part_again_after_the_readmit_delay(db, settings, place):
    """The demo has two nodes: a two-node job whose agent restarted must not wait for ever."""
    settings.NODE_LOST_READMIT_S = 60
    offer = cpu_offer("0.10")
    job = funded_job(nodes=1)
    lost = _run_and_lose(job)
    job.refresh_from_db()
    assert job.excluded_nodes == [offer.node_id]
    assert placement.job_place(job_id=job.pk) == []  # no other node, and too soon
    _age_losses(job, 61)
    if place == "job_place":
        (again,) = placement.job_place(job_id=job.pk)
    else:
        placed = batch_placement.jobs_place_waiting()
        (again,) = Assignment.objects.filter(pk__in=placed[job.pk])
    assert again.node_id == lost.node_id and again.attempt == 2


def test_a_node_lost_twice_on_a_job_stays_out(db, settings):
    settings.NODE_LOST_READMIT_S = 0
    offer = cpu_offer("0.10")
    job = funded_job(nodes=1)
    _run_and_lose(job)
    _age_losses(job, 1)
    job.refresh_from_db()
    _run_and_lose(job)  # readmitted once, lost again
    _age_losses(job, 1)
    assert placement.job_place(job_id=job.pk) == []
    assert nodes_excluded(Job.objects.get(pk=job.pk), now=timezone.now()) == {offer.node_id}


def test_a_node_that_failed_or_wrote_a_rejected_checkpoint_is_never_readmitted(db, settings):
    settings.NODE_LOST_READMIT_S = 0
    offer = cpu_offer("0.10")
    job = funded_job(nodes=1)
    (a,) = placement.job_place(job_id=job.pk)
    Assignment.objects.filter(pk=a.pk).update(status=Assignment.Status.FAILED, finished_at=timezone.now())
    Offer.objects.filter(pk=offer.pk).update(gpus_reserved=0)  # its slots are free again
    Job.objects.filter(pk=job.pk).update(excluded_nodes=[a.node_id], status=S.INTERRUPTED)
    assert placement.job_place(job_id=job.pk) == []
    # Lost once, but also the author of a checkpoint the platform rejected: it stays out.
    job2 = funded_job(nodes=1)
    lost = _run_and_lose(job2)
    assert lost.node_id == offer.node_id
    _age_losses(job2, 1)
    Checkpoint.objects.create(job=job2, assignment=lost, step=10, sha256="0" * 64, size_bytes=1,
                              status=Checkpoint.Status.REJECTED, rejected_reason="not a checkpoint")
    assert nodes_excluded(Job.objects.get(pk=job2.pk), now=timezone.now()) == {offer.node_id}
    assert placement.job_place(job_id=job2.pk) == []


@pytest.mark.parametrize("place", ["job_place", "batch"])
def test_a_job_waits_for_its_newest_checkpoints_check_before_resuming(db, place):
    """Placed while its checkpoint is still pending (the check runs on the verify queue), a
    paused or interrupted job resumed from step 0 and redid the work (test_budget_e2e saw it)."""
    cpu_offer("0.10")
    job = funded_job(nodes=1)
    (a,) = placement.job_place(job_id=job.pk)
    ckpt = Checkpoint.objects.create(job=job, assignment=a, step=10, sha256="1" * 64, size_bytes=1,
                                     committed_at=timezone.now())
    Assignment.objects.filter(pk=a.pk).update(status=Assignment.Status.PAUSED, finished_at=timezone.now())
    Offer.objects.filter(pk=a.offer_id).update(gpus_reserved=0)
    Job.objects.filter(pk=job.pk).update(status=S.INTERRUPTED)

    def place_now() -> list[Assignment]:
        if place == "job_place":
            return placement.job_place(job_id=job.pk)
        return list(Assignment.objects.filter(pk__in=batch_placement.jobs_place_waiting().get(job.pk, [])))

    assert place_now() == []
    # Valid on upload; the work up to it must replay too (a broken or paused attempt's
    # resume point): the placement asks for that once and waits for it.
    Checkpoint.objects.filter(pk=ckpt.pk).update(status=Checkpoint.Status.VALID)
    assert place_now() == []
    asked = Checkpoint.objects.get(pk=ckpt.pk).replay_requested_at
    assert asked is not None
    assert place_now() == [] and Checkpoint.objects.get(pk=ckpt.pk).replay_requested_at == asked
    Checkpoint.objects.filter(pk=ckpt.pk).update(status=Checkpoint.Status.VERIFIED)
    (b,) = place_now()
    assert b.resume_step == 10
