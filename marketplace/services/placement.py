"""Placing a job: reserve capacity on offers atomically and create its assignments.

Concurrent matchers never double-book: candidate offer rows are locked with
`SELECT … FOR UPDATE SKIP LOCKED`, and capacity is re-checked on the locked row.
"""

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .. import job_states
from ..models import Assignment, Job, JobEvent, Offer
from ..money import amount, tusd
from ..selectors.checkpoints import checkpoints_resumable, jobs_awaiting_checkpoint_check
from ..selectors.exclusions import nodes_excluded
from . import deadlines, live, matching, replays
from .job_spec import JobSpec

S = Job.Status
# never_own_nodes: an organization that is both consumer and provider never gets its own
# nodes on its own jobs (here, in diloco_replace and in batch_placement). As a node of its
# own job it could corrupt its share of the gradients and have an honest peer blamed.


def spec_of(job: Job) -> JobSpec:
    return JobSpec(
        name=job.name, template=job.template, dataset=job.dataset_ref, nodes=job.nodes,
        gpus_per_node=job.gpus_per_node, max_price_per_gpu_hour=job.max_price_per_gpu_hour,
        budget=job.budget, deadline=job.deadline, params=job.params,
        min_gpu_memory_gb=job.min_gpu_memory_gb, gpu_models=tuple(job.gpu_models),
        regions=tuple(job.regions), compliance=tuple(job.compliance),
        min_reliability=job.min_reliability, duration_hours=job.duration_hours, sync=job.sync,
        bundle=str(job.bundle_id or ""), runtime=job.bundle.runtime if job.bundle is not None else "",
    )


EXPLAIN_EVERY = timedelta(minutes=2)


def explain_due(job_id: int) -> bool:
    """Working out why nothing fits costs a dozen counts: at most every two minutes a job."""
    return cache.add(f"computemesh:explained:{job_id}", 1, timeout=EXPLAIN_EVERY.total_seconds())


def job_explain_wait(*, job_id: int) -> None:
    """Say on the timeline why a waiting job found no machines (once per distinct reason)."""
    job = Job.objects.filter(pk=job_id, status=S.MATCHING).first()
    if job is None or job.assignments.filter(status__in=Assignment.ACTIVE).exists():
        return
    if (late := deadlines.job_shortfall(job, now=timezone.now())) is not None:
        _note_wait(job, late["message"], [late])
        return
    quote = matching.quote_job(spec=spec_of(job))
    reasons = quote.reasons
    if quote.feasible or not reasons:
        excluded = ", ".join(str(n) for n in job.excluded_nodes) or "none"
        message = (f"The nodes that fit this job failed or were lost during it earlier and are "
                   f"not used now (nodes {excluded}; a node lost only once may take part again "
                   f"{settings.NODE_LOST_READMIT_S} s after the loss, once it is back online); "
                   f"waiting for a node.")
    else:
        message = " ".join(r["message"] for r in reasons[:3])
    _note_wait(job, message, reasons)


def _note_wait(job: Job, message: str, reasons: list[dict]) -> None:
    """Why the job waits, on its timeline once per distinct reason."""
    last = JobEvent.objects.filter(job=job, reason="no_match").order_by("-id").first()
    if last is None or last.message != message[:1000]:
        job_states.note(job_id=job.pk, reason="no_match", message=message[:1000],
                        data={"reasons": reasons})


def placed_message(offers: list[tuple[str, str, Decimal]], gpus_per_node: int,
                   resume_step: int | None) -> str:
    where = ", ".join(f"{model} in {region} at {amount(price)}" for model, region, price in offers)
    total = sum((price for _, _, price in offers), Decimal(0)) * gpus_per_node
    n = len(offers)
    return (f"Placed on {n} node{'s' if n > 1 else ''} ({where} tUSD/GPU-h; {tusd(total, 'tUSD/h')} in all)"
            + (f", resuming from step {resume_step}." if resume_step else "."))


def job_place(*, job_id: int) -> list[Assignment]:
    """Reserve `nodes` offers for the job at the lowest price and create its assignments,
    or leave it waiting in `matching` with the reasons on its timeline."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status in (S.FUNDED, S.INTERRUPTED):
            job_states.transition(job_id=job.pk, to=S.MATCHING, reason="matching",
                                  message="Looking for machines that meet every constraint.")
            job.refresh_from_db()
        if job.status != S.MATCHING or job.assignments.filter(status__in=Assignment.ACTIVE).exists():
            return []
        # Not placed when it would have to stop before its budget's work is done: its
        # providers would not be paid after the consumer may reclaim the escrow.
        if (late := deadlines.job_shortfall(job, now=timezone.now())) is not None:
            _note_wait(job, late["message"], [late])
            return []
        if (step := jobs_awaiting_checkpoint_check([job.pk], now=timezone.now()).get(job.pk)) is not None:
            replays.replay_request(job.pk)  # when it is a replay it waits for, and none was asked
            _note_wait(job, f"Waiting for the check of the checkpoint at step {step} before "
                            "resuming from it.", [{"code": "checkpoint_check", "step": step}])
            return []
        spec = spec_of(job)
        constraints = matching.constraints_for(spec)
        candidates = (matching.offers_matching(spec, constraints)
                      .exclude(node_id__in=nodes_excluded(job, now=timezone.now()))
                      .exclude(provider_id=job.owner_id)  # never_own_nodes
                      .order_by("price_per_gpu_hour", "-reliability", "id")
                      .values_list("pk", "node_id")[: max(50, spec.nodes * 20)])
        picked: list[Offer] = []
        seen: set[int] = set()
        for offer_id, node_id in candidates:
            if node_id in seen:
                continue
            # Lock only what is picked, skipping rows a concurrent matcher holds, and
            # re-check the capacity on the locked row.
            offer = (Offer.objects.select_for_update(skip_locked=True, of=("self",))
                     .filter(pk=offer_id, status=Offer.Status.ACTIVE,
                             gpus_reserved__lte=F("gpus_offered") - spec.gpus_per_node).first())
            if offer is None:
                continue
            seen.add(node_id)
            picked.append(offer)
            if len(picked) == spec.nodes:
                break
        if len(picked) < spec.nodes:
            if explain_due(job.pk):
                job_explain_wait(job_id=job.pk)
            return []
        job.attempt += 1
        job.save(update_fields=["attempt", "updated_at"])
        resume = checkpoints_resumable(job.checkpoints.all()).order_by("-step").first()
        assignments = []
        for rank, offer in enumerate(picked):
            reserved = Offer.objects.filter(
                pk=offer.pk, gpus_reserved__lte=F("gpus_offered") - spec.gpus_per_node
            ).update(gpus_reserved=F("gpus_reserved") + spec.gpus_per_node)
            if reserved != 1:  # cannot happen under the row lock; never overbook if it does
                transaction.set_rollback(True)
                return []
            assignments.append(Assignment.objects.create(
                job=job, node_id=offer.node_id, offer=offer, attempt=job.attempt, node_rank=rank,
                gpus=spec.gpus_per_node, price_per_gpu_hour=offer.price_per_gpu_hour,
                resume_step=resume.step if resume else None))
        live.offers_changed([o.pk for o in picked])
        job_states.note(
            job_id=job.pk, reason="placed",
            message=placed_message([(o.gpu_model, o.region, o.price_per_gpu_hour) for o in picked],
                                   spec.gpus_per_node, resume.step if resume else None),
            data={"attempt": job.attempt, "offers": [o.pk for o in picked],
                  "nodes": [o.node_id for o in picked]})
    return assignments


def _missing_ranks(job: Job) -> list[int]:
    """A running DiLoCo job's ranks with no live assignment, while rank 0 still trains."""
    live = dict(job.assignments.filter(attempt=job.attempt, status__in=Assignment.ACTIVE)
                .values_list("node_rank", "node_id"))
    if 0 not in live:
        return []
    done = set(job.assignments.filter(attempt=job.attempt, status=Assignment.Status.SUCCEEDED)
               .values_list("node_rank", flat=True))
    return [r for r in range(1, job.nodes) if r not in live and r not in done]


def diloco_replace(*, job_id: int) -> list[Assignment]:
    """Place a running DiLoCo job's missing ranks on other nodes, in the same attempt: each
    joins the others at their next outer step from the current global model (the runtime
    hands it over), so nothing restarts. Ranks that find no node now stay missing; the job
    goes on with fewer and `diloco_jobs_short` tries again."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status != S.RUNNING or (job.sync or {}).get("mode") != "diloco":
            return []
        missing = _missing_ranks(job)
        if not missing:
            return []
        spec = spec_of(job)
        busy = set(job.assignments.filter(attempt=job.attempt, status__in=Assignment.ACTIVE)
                   .values_list("node_id", flat=True))
        candidates = (matching.offers_matching(spec, matching.constraints_for(spec))
                      .exclude(node_id__in=[*job.excluded_nodes, *busy])
                      .exclude(provider_id=job.owner_id)  # never_own_nodes
                      .order_by("price_per_gpu_hour", "-reliability", "id")
                      .values_list("pk", "node_id")[:50])
        placed: list[Assignment] = []
        for offer_id, node_id in candidates:
            if len(placed) == len(missing):
                break
            if node_id in busy:
                continue
            offer = (Offer.objects.select_for_update(skip_locked=True, of=("self",))
                     .filter(pk=offer_id, status=Offer.Status.ACTIVE,
                             gpus_reserved__lte=F("gpus_offered") - spec.gpus_per_node).first())
            if offer is None:
                continue
            Offer.objects.filter(pk=offer.pk).update(gpus_reserved=F("gpus_reserved") + spec.gpus_per_node)
            busy.add(node_id)
            rank = missing[len(placed)]
            placed.append(Assignment.objects.create(
                job=job, node_id=node_id, offer=offer, attempt=job.attempt, node_rank=rank,
                gpus=spec.gpus_per_node, price_per_gpu_hour=offer.price_per_gpu_hour))
            job_states.note(
                job_id=job.pk, reason="node_replaced",
                message=f"Node rank {rank} continues on node {node_id} ({offer.gpu_model} in "
                        f"{offer.region} at {tusd(offer.price_per_gpu_hour, 'tUSD/GPU-h')}); it joins "
                        "the others at their next outer step.",
                data={"attempt": job.attempt, "node_rank": rank, "node": node_id, "offer": offer.pk})
        if placed:
            live.offers_changed([a.offer_id for a in placed])
    return placed


def diloco_jobs_short() -> list[int]:
    """Running DiLoCo jobs that lack a node (its replacement found no machine yet)."""
    jobs = Job.objects.filter(status=S.RUNNING, nodes__gt=1, sync__mode="diloco")
    return [job.pk for job in jobs.only("id", "attempt", "nodes") if _missing_ranks(job)]


def release(assignment: Assignment) -> None:
    """Give the assignment's GPUs back to its offer (callers guarantee exactly once)."""
    Offer.objects.filter(pk=assignment.offer_id, gpus_reserved__gte=assignment.gpus).update(
        gpus_reserved=F("gpus_reserved") - assignment.gpus)
    live.offers_changed([assignment.offer_id])


def max_attempts() -> int:
    return settings.JOB_MAX_ATTEMPTS


def attempts_used(job: Job) -> int:
    """Placements that count against JOB_MAX_ATTEMPTS: a placement that ended because the
    budget was spent (paused, then resumed by a top-up) did not fail."""
    return job.attempt - job.events.filter(reason="budget_paused").count()
