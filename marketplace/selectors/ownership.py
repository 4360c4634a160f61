"""Who may do what with a job, in one place: every entry point (the API, the HTML views,
the job's live socket) asks here, never compares `owner_id` itself.

- view: its owner organization's members and staff see it (pages, the API, cancelling);
- watch: also the providers whose nodes run or ran it follow it live (the job socket);
- own: only its owner organization acts as the customer (fund, raise the budget, dispute):
  staff see and cancel every job but spend no one's money.

A job outside the caller's scope is "not found", never "forbidden": its id says nothing."""

from enum import StrEnum

from django.db.models import QuerySet

from ..errors import NotFound
from ..models import Job
from .accounts import organization_of


class JobAction(StrEnum):
    VIEW = "view"
    WATCH = "watch"
    OWN = "own"


def _base(qs: QuerySet[Job] | None) -> QuerySet[Job]:
    return Job.objects.all() if qs is None else qs


def jobs_owned_by(user, qs: QuerySet[Job] | None = None) -> QuerySet[Job]:
    """The caller's organization's jobs (staff only through their own organization). `qs`
    (select_related, annotations) is narrowed, never widened, in all three scopes."""
    org = organization_of(user)
    return _base(qs).filter(owner=org) if org is not None else _base(qs).none()


def jobs_visible_to(user, qs: QuerySet[Job] | None = None) -> QuerySet[Job]:
    """A consumer sees its organization's jobs; staff see all."""
    if user is not None and user.is_authenticated and user.is_staff:
        return _base(qs)
    return jobs_owned_by(user, qs)


def jobs_watchable_by(user, qs: QuerySet[Job] | None = None) -> QuerySet[Job]:
    """Jobs a user may watch live: its organization's, those its provider organization's
    nodes run or ran, and all of them for staff."""
    org = organization_of(user)
    if org is not None and org.is_provider and not user.is_staff:
        return _base(qs).filter(pk__in=Job.objects.filter(assignments__node__provider=org).values("pk"))
    return jobs_visible_to(user, qs)


SCOPES = {JobAction.VIEW: jobs_visible_to, JobAction.WATCH: jobs_watchable_by, JobAction.OWN: jobs_owned_by}


def jobs_for(user, action: JobAction = JobAction.VIEW, qs: QuerySet[Job] | None = None) -> QuerySet[Job]:
    return SCOPES[JobAction(action)](user, qs)


def job_for(user, pk, action: JobAction = JobAction.VIEW, qs: QuerySet[Job] | None = None) -> Job:
    """The job `pk` if the user may do `action` with it, else NotFound (404)."""
    job = jobs_for(user, action, qs).filter(pk=pk).first() if str(pk).isdigit() else None
    if job is None:
        raise NotFound("No job with that id among your organization's jobs."
                       if action == JobAction.OWN else "No job with that id.")
    return job


def is_job_owner(user, job: Job) -> bool:
    org = organization_of(user)
    return org is not None and org.pk == job.owner_id
