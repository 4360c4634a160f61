"""A row of *My jobs*, alone: what the page's live script (static/js/live_dash.js) adds when
the dashboard socket tells of a job the page does not show yet (a job just submitted).
Rendered by the page's own template, for the caller's jobs only."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render

from ..selectors.budget import budget_view
from ..selectors.job_status import STATUS_FILTERS, job_state, jobs_filtered
from ..selectors.live import cost_so_far
from ..selectors.ownership import jobs_visible_to


def with_money(job):
    """What a row shows of the job's money: spent so far, the budget warning, how it ended."""
    job.spent = cost_so_far(job)
    job.spend = budget_view(job, spent=job.spent)
    job.state = job_state(job, spent=job.spent)
    return job


@login_required
def job_row(request, pk: int):
    """The job's row under the page's filters (`status`, `q`); 204 when the job is not the
    caller's to see or does not match them (the page then adds nothing)."""
    status = request.GET.get("status", "")
    status = status if status in STATUS_FILTERS else ""
    job = (jobs_filtered(jobs_visible_to(request.user).filter(pk=pk), status=status,
                         search=request.GET.get("q", "")[:120])
           .prefetch_related("assignments", "disputes").first())
    if job is None:
        return HttpResponse(status=204)
    return render(request, "jobs/_row.html", {"job": with_money(job)})
