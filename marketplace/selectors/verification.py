"""Reading verification reports (the job page, the API and the downloadable report)."""

from django.urls import reverse

from ..models import Job, VerificationReport
from .determinism import job_verification_method


def job_model_verified(job: Job) -> bool:
    """The trained model is the consumer's only once the work behind it passed verification:
    before that it may be a cheat's (an inflated metric, skipped steps), and a consumer who
    downloads it has what it wanted whether or not the provider is then disputed."""
    return (bool(job.artifact) and job.status in (Job.Status.COMPLETED, Job.Status.SETTLED)
            and job.verifications.filter(attempt=job.attempt, status=VerificationReport.Status.PASSED)
            .exists())


def job_model_downloadable(job: Job, user) -> bool:
    """Whether `user` (who may see the job) may download its model: staff may at any time, to
    look into a dispute; everyone else once the model is verified."""
    return bool(job.artifact) and (getattr(user, "is_staff", False) or job_model_verified(job))


def job_verification_summary(job: Job) -> dict:
    """`{status, report_url}` of the job's latest attempt (the API contract), and `method`:
    how its work is verified (selectors/determinism.py)."""
    report = job.verifications.order_by("-attempt").first()
    method = job_verification_method(job)
    if report is None:
        return {"status": "pending", "report_url": None, "method": method}
    return {"status": report.status, "report_url": reverse("api:job-verification", args=[job.pk]),
            "method": method}


def _report(r: VerificationReport) -> dict:
    return {
        "attempt": r.attempt, "status": r.status, "status_display": r.get_status_display(),
        "threshold": r.threshold, "segments": r.segments,
        "replay_steps": r.replay_steps, "train_steps": r.train_steps,
        "compute_share": r.compute_share,
        "metric": {"name": r.metric_name, "reported": r.metric_reported, "measured": r.metric_measured},
        "findings": [x for x in r.reasons if not x.startswith("note: ")],
        "notes": [x.removeprefix("note: ") for x in r.reasons if x.startswith("note: ")],
        "disputes": [{"id": d.pk, "reason": d.reason, "status": d.status, "assignment": d.assignment_id,
                      "detail": d.detail} for d in r.disputes.all()],
        "started_at": r.started_at.isoformat() if r.started_at else None,
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
    }


def job_verification_report(job: Job) -> dict:
    """The whole verification record of a job: one report per verified attempt."""
    reports = list(job.verifications.prefetch_related("disputes").order_by("attempt"))
    return {"job": job.pk, "name": job.name, "status": job.status,
            "reports": [_report(r) for r in reports]}
