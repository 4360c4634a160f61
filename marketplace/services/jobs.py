from django.conf import settings
from django.db import transaction

from .. import job_states
from ..errors import PermissionDenied
from ..models import Job, Organization
from ..money import tusd
from . import enqueue
from .assignments import job_stop_assignments, lock_job_and_parts
from .determinism import determinism_request
from .job_spec import JobSpec, job_spec_validate

S = Job.Status


def job_submit(*, owner: Organization, spec: JobSpec, actor=None) -> Job:
    """Validate and record a job; it then waits for its escrow to be funded."""
    if not owner.is_consumer:
        raise PermissionDenied("Only consumer organizations can submit jobs.")
    if owner.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    spec = job_spec_validate(spec=spec, owner=owner)
    with transaction.atomic():
        job = Job.objects.create(
            owner=owner, created_by=actor, name=spec.name, template=spec.template,
            params=spec.params, dataset_ref=spec.dataset, dataset=spec.dataset_obj,
            bundle=spec.bundle_obj, weights=spec.weights_obj,
            nodes=spec.nodes, gpus_per_node=spec.gpus_per_node, sync=spec.sync,
            min_gpu_memory_gb=spec.min_gpu_memory_gb, gpu_models=list(spec.gpu_models),
            regions=list(spec.regions), compliance=list(spec.compliance),
            min_reliability=spec.min_reliability,
            max_price_per_gpu_hour=spec.max_price_per_gpu_hour, budget=spec.budget,
            duration_hours=spec.duration_hours, deadline=spec.deadline, status=S.DRAFT,
        )
        job_states.transition(
            job_id=job.pk, to=S.SUBMITTED, reason="submitted", actor=actor,
            message=f"Submitted by {getattr(actor, 'username', 'API')}: {spec.nodes} × "
                    f"{spec.gpus_per_node} {'CPU slots' if spec.wants_cpu else 'GPUs'}, "
                    f"up to {tusd(spec.max_price_per_gpu_hour)}/GPU-h, budget {tusd(spec.budget)}.",
        )
        if not settings.ESCROW_ENABLED:
            job_states.transition(
                job_id=job.pk, to=S.FUNDED, reason="escrow_disabled",
                message="On-chain escrow is not enabled on this platform; the job runs without "
                        "funding.")
            enqueue.match_job(job.pk)
        # Before funding: is its own task deterministic? (the job page says so once known)
        determinism_request(spec=spec)
    job.refresh_from_db()
    return job


def job_cancel(*, job: Job, actor=None, reason: str = "cancelled_by_owner",
               message: str = "") -> Job:
    """Cancel a job that has not finished and stop it on every node. Idempotent: a job
    already cancelled (and maybe settled or refunded since) is returned as it is, so a
    retried cancel settles and refunds once."""
    who = getattr(actor, "username", "the platform")
    with transaction.atomic():
        current = lock_job_and_parts(job.pk)
        if current.status == S.CANCELLED or (
                current.status in (S.SETTLED, S.REFUNDED)
                and current.events.filter(to_status=S.CANCELLED).exists()):
            return current
        job = job_states.transition(
            job_id=job.pk, to=S.CANCELLED, reason=reason, actor=actor,
            message=message or f"Cancelled by {who}.", expect=job_states.CANCELLABLE,
        )
        stopped = job_stop_assignments(job=job, reason=f"job cancelled by {who}")
        if stopped:
            job_states.note(job_id=job.pk, reason="assignments_stopped",
                            message=f"Stopped the job on {stopped} node{'s' if stopped > 1 else ''}.")
    return job
