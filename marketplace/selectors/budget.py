"""A job's budget as the job page, the API and the dashboards show it (services/budget.py
acts on it: warns, pauses, resumes)."""

from decimal import Decimal

from ..models import Job
from .metering import budget_limit

S = Job.Status
WARN_AT = Decimal("0.8")  # the share of the budget spent that warns the consumer


def budget_view(job: Job, *, spent: Decimal) -> dict:
    """What the job page, the API and the dashboards show."""
    limit = budget_limit(job)
    percent = float(spent / limit * 100) if limit > 0 else 100.0
    return {"limit": str(limit), "spent": str(spent), "percent": round(percent, 1),
            "warning": job.status in S.ACTIVE and percent >= float(WARN_AT * 100),
            "paused": job.status == S.PAUSED}
