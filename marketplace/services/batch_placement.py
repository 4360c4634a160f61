"""Placing many waiting jobs in one pass (the periodic re-matcher).

The candidate offers are read once into an in-memory book, bucketed by GPU model, memory,
region bloc and free capacity and sorted by price; jobs are served largest first, then
oldest first, each taking the cheapest offers on distinct nodes that meet every
constraint. The chosen offer rows are then locked (`FOR UPDATE SKIP LOCKED`), their
capacity re-checked, and everything is written in a handful of statements.
"""

import heapq
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from itertools import islice

from django.conf import settings
from django.db import transaction
from django.db.models import CharField, DecimalField, F, Max, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .. import catalogue, job_states, task_names
from ..models import Assignment, Checkpoint, Job, JobEvent, Offer
from ..selectors.checkpoints import checkpoints_resumable, jobs_awaiting_checkpoint_check
from ..selectors.exclusions import nodes_excluded
from . import deadlines, enqueue, placement, replays

S = Job.Status
WAITING = (S.FUNDED, S.INTERRUPTED, S.MATCHING)


@dataclass(slots=True)  # tens of thousands per pass: slots make them cheaper to build
class BookOffer:
    pk: int
    node_id: int
    gpu_model: str
    gpu_memory_gb: int
    region: str
    compliance: int
    reliability: Decimal | None
    free: int
    price: Decimal
    until: object
    min_hours: Decimal
    max_hours: Decimal | None
    stake: Decimal = Decimal(0)
    provider_id: int = 0
    # Code bundles: the offer accepts custom code; the runtime its node's agent reported.
    custom_code: bool = False
    runtime: str = ""


def _key(o: BookOffer):
    return (o.price, -(o.reliability or 0), o.pk)


class OfferBook:
    """Offers in price order, one list per GPU model, memory, region bloc and free capacity
    when read (it only shrinks during a pass), so that a job walks only the lists it could use;
    used-up offers at the head of a list are skipped once."""

    def __init__(self, offers: list[BookOffer], *, ordered: bool = False):
        """`ordered`: `offers` already come in _key order (then so does every list)."""
        self.lists: dict[tuple[str, int, str, int], list[BookOffer]] = defaultdict(list)
        for o in offers:
            self.lists[(o.gpu_model, o.gpu_memory_gb, o.region.split("-")[0], o.free)].append(o)
        if not ordered:
            for offers_ in self.lists.values():
                offers_.sort(key=_key)
        self.start = dict.fromkeys(self.lists, 0)
        self.failed: set[tuple] = set()

    def _walk(self, key):
        offers, i = self.lists[key], self.start[key]
        while i < len(offers) and offers[i].free <= 0:
            i += 1
        self.start[key] = i
        return islice(offers, i, None)

    def cheapest(self, job: Job, now) -> list[BookOffer]:
        """The cheapest fitting offers on `job.nodes` distinct nodes, or []."""
        models = set(job.gpu_models) or {m for m in catalogue.GPU_MODELS if m != catalogue.CPU}
        regions = set(catalogue.region_codes(job.regions)) if job.regions else None
        blocs = {r.split("-")[0] for r in regions} if regions is not None else None
        mask = catalogue.compliance_mask(job.compliance) if job.compliance else 0
        # Verified tags also need the provider's stake (offer_search.verified_for).
        min_stake = settings.MIN_STAKE_FOR_VERIFIED_TAGS if mask else 0
        excluded = nodes_excluded(job, now=now)
        runtime = job.bundle.runtime if job.bundle is not None else ""  # a code bundle's
        # A shape that found nothing earlier in this pass finds nothing now: capacity only
        # shrinks while a pass runs.
        shape = (frozenset(models), job.min_gpu_memory_gb, frozenset(regions or ()), mask,
                 job.min_reliability, job.gpus_per_node, job.nodes, job.max_price_per_gpu_hour,
                 job.duration_hours, tuple(sorted(excluded)), job.owner_id, runtime)
        if shape in self.failed:
            return []
        walks = [self._walk(k) for k in self.lists
                 if k[0] in models and k[1] >= job.min_gpu_memory_gb and k[3] >= job.gpus_per_node
                 and (blocs is None or k[2] in blocs)]
        hours = job.duration_hours
        end = now + timedelta(hours=float(hours))
        picked: list[BookOffer] = []
        nodes: set[int] = set()
        for o in heapq.merge(*walks, key=_key):
            if o.price > job.max_price_per_gpu_hour:
                break
            if (o.free < job.gpus_per_node or o.node_id in nodes or o.node_id in excluded
                    or o.provider_id == job.owner_id  # placement's never_own_nodes
                    or o.gpu_memory_gb < job.min_gpu_memory_gb
                    or (regions is not None and o.region not in regions)
                    or o.compliance & mask != mask or o.stake < min_stake
                    or (job.min_reliability
                        and (o.reliability is None or o.reliability < job.min_reliability))
                    or (o.until is not None and o.until < end) or o.min_hours > hours
                    or (o.max_hours is not None and o.max_hours < hours)
                    or (runtime and (not o.custom_code or o.runtime != runtime))):
                continue
            picked.append(o)
            nodes.add(o.node_id)
            if len(picked) == job.nodes:
                return picked
        self.failed.add(shape)
        return []


def _book(jobs: list[Job], now) -> OfferBook:
    smallest = min(j.gpus_per_node for j in jobs)
    dearest = max(j.max_price_per_gpu_hour for j in jobs)
    # The node's runtime (a join over every row) only matters to jobs with a code bundle.
    bundles = any(j.bundle is not None and j.bundle.runtime for j in jobs)
    rows = (Offer.objects.filter(status=Offer.Status.ACTIVE, node_online=True, available_from__lte=now,
                                 price_per_gpu_hour__lte=dearest,
                                 gpus_offered__gte=F("gpus_reserved") + smallest)
            # In the book's order (_key), so that OfferBook need not sort tens of thousands.
            .order_by("price_per_gpu_hour", Coalesce("reliability", Value(0), output_field=DecimalField())
                      .desc(), "pk")
            .values_list("pk", "node_id", "gpu_model", "gpu_memory_gb", "region", "compliance_verified",
                         "reliability", "gpus_offered", "gpus_reserved", "price_per_gpu_hour",
                         "available_until", "min_duration_hours", "max_duration_hours", "provider_stake",
                         "provider_id", "accepts_custom_code",
                         "node__runtime" if bundles else Value("", output_field=CharField())))
    return OfferBook([BookOffer(pk, node, model, memory, region, comp, rel, offered - reserved, price,
                                until, min_h, max_h, stake, provider, custom, runtime)
                      for (pk, node, model, memory, region, comp, rel, offered, reserved, price, until,
                           min_h, max_h, stake, provider, custom, runtime)
                      in rows], ordered=True)  # one fetch: a server-side cursor's chunks were round trips


def jobs_place_waiting(*, limit: int = 2000) -> dict[int, list[int]]:
    """Place as many waiting jobs as fit (largest, then oldest first; the `limit` oldest
    waiting jobs are considered). Returns {job id: assignment ids};
    jobs left waiting get the reasons on their timelines (rate-limited)."""
    now = timezone.now()
    with transaction.atomic():
        # The escrow comes along for deadlines.job_shortfall (else a query a job).
        jobs = list(Job.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related("bundle", "escrow").filter(status__in=WAITING)
                    .exclude(assignments__status__in=Assignment.ACTIVE)
                    .order_by("created_at", "id")[:limit])
        if not jobs:
            return {}
        job_states.transition_many(job_ids=[j.pk for j in jobs], to=S.MATCHING, reason="matching",
                                   message="Looking for machines that meet every constraint.",
                                   expect={S.FUNDED, S.INTERRUPTED})
        book = _book(jobs, now)
        # Placed before its newest checkpoint is checked, a job would resume from an older one.
        awaiting = jobs_awaiting_checkpoint_check([j.pk for j in jobs], now=now)
        for job_id in awaiting:
            replays.replay_request(job_id)  # when it is a replay it waits for, and none was asked
        plans: dict[int, list[BookOffer]] = {}
        # Largest first, then oldest first: big jobs are the hardest to place and would
        # starve behind small ones, and packing them first came out at the optimal total
        # price on every instance bench/matching.py solved exactly (first come, first served
        # was up to 1.9 % above it).
        for job in sorted(jobs, key=lambda j: (-j.gpus_per_node, -j.nodes, j.created_at, j.pk)):
            if deadlines.job_shortfall(job, now=now) is not None:  # explain_wait says why
                continue
            if job.pk in awaiting:  # placed again once the check is done (checkpoint_validate)
                continue
            picked = book.cheapest(job, now)
            if picked:
                for o in picked:
                    o.free -= job.gpus_per_node
                plans[job.pk] = picked
        placed = _reserve(jobs, plans)
        for job in jobs:  # the reasons are worked out off this pass, by the default queue
            if job.pk not in placed and placement.explain_due(job.pk):
                enqueue.enqueue(task_names.EXPLAIN_WAIT, job.pk)
        if placed:  # browsers watching these jobs and offers are told off this pass too
            enqueue.enqueue(task_names.ANNOUNCE_JOBS, list(placed))
        return placed


def _reserve(jobs: list[Job], plans: dict[int, list[BookOffer]]) -> dict[int, list[int]]:
    """Lock the planned offers, drop plans whose offers changed meanwhile, and write the
    reservations, assignments and timeline notes in bulk."""
    by_job = {j.pk: j for j in jobs}
    wanted: dict[int, int] = defaultdict(int)
    for job_id, offers in plans.items():
        for o in offers:
            wanted[o.pk] += by_job[job_id].gpus_per_node
    locked = {pk: free for pk, free in Offer.objects.select_for_update(skip_locked=True, of=("self",))
              .filter(pk__in=list(wanted), status=Offer.Status.ACTIVE)
              .values_list("pk", F("gpus_offered") - F("gpus_reserved"))}
    for job_id in list(plans):  # a concurrent change: this job waits for the next pass
        if any(o.pk not in locked or locked[o.pk] < wanted[o.pk] for o in plans[job_id]):
            for o in plans.pop(job_id):
                wanted[o.pk] -= by_job[job_id].gpus_per_node
    if not plans:
        return {}
    # One UPDATE per distinct increment (a handful: GPUs per node times jobs sharing an
    # offer), not one CASE with a branch per offer, which PostgreSQL walks for every row.
    by_increment: dict[int, list[int]] = defaultdict(list)
    for pk, n in wanted.items():
        if n:
            by_increment[n].append(pk)
    stamp = timezone.now()
    for n, pks in by_increment.items():
        Offer.objects.filter(pk__in=pks).update(gpus_reserved=F("gpus_reserved") + n, updated_at=stamp)
    Job.objects.filter(pk__in=list(plans)).update(attempt=F("attempt") + 1)
    resume = dict(checkpoints_resumable(Checkpoint.objects.filter(job__in=list(plans)))
                  .values_list("job").annotate(step=Max("step")))
    assignments = Assignment.objects.bulk_create([
        Assignment(job_id=job_id, node_id=o.node_id, offer_id=o.pk, attempt=by_job[job_id].attempt + 1,
                   node_rank=rank, gpus=by_job[job_id].gpus_per_node, price_per_gpu_hour=o.price,
                   resume_step=resume.get(job_id))
        for job_id, offers in plans.items() for rank, o in enumerate(offers)])
    JobEvent.objects.bulk_create([
        JobEvent(job_id=job_id, reason="placed", message=placement.placed_message(
            [(o.gpu_model, o.region, o.price) for o in offers], by_job[job_id].gpus_per_node,
            resume.get(job_id)),
            data={"attempt": by_job[job_id].attempt + 1, "offers": [o.pk for o in offers],
                  "nodes": [o.node_id for o in offers]})
        for job_id, offers in plans.items()])
    out: dict[int, list[int]] = defaultdict(list)
    for a in assignments:
        out[a.job_id].append(a.pk)
    return dict(out)

