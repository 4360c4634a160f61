"""The Account page (an organization's balances and every money movement), the balance in
the header (an htmx fragment, so that no page waits for the chain), the development faucet,
and the statements (per job and per month, CSV and PDF)."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from ..errors import MarketError
from ..money import tusd
from ..selectors.account import account_balances, account_months, account_movements, jobs_with_statement
from ..selectors.accounts import organization_of
from ..selectors.statements import (
    job_statement_csv,
    job_statement_pdf,
    month_statement_csv,
    month_statement_pdf,
)
from ..services.faucet import faucet_available, faucet_claim, faucet_interval_text, faucet_next_at

FORMATS = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf"}


def _org_or_403(request):
    org = organization_of(request.user)
    if org is None:
        return None, render(request, "403.html", {"message": "Join or create an organization to have an "
                                                             "account.", "kind": "member"}, status=403)
    return org, None


@login_required
@require_GET
def account(request):
    org, refused = _org_or_403(request)
    if refused is not None:
        return refused
    month = _month_param(request.GET.get("month", ""))
    movements = account_movements(org, month=month)
    return render(request, "account/account.html", {
        "org": org, "balances": account_balances(org), "movements": movements[:500],
        "months": account_months(org), "month": f"{month[0]}-{month[1]:02d}" if month else "",
        "statement_jobs": jobs_with_statement(org)[:50] if org.is_consumer else [],
        "faucet": faucet_available(), "faucet_next_at": faucet_next_at(org),
        "faucet_amount": settings.FAUCET_AMOUNT, "faucet_every": faucet_interval_text(),
        "escrow_enabled": settings.ESCROW_ENABLED,
    })


@login_required
@require_GET
def account_balance(request):
    """The header's balance (htmx): what the organization can spend, and its escrow or
    earnings, with a link to the Account page."""
    org = organization_of(request.user)
    if org is None:
        return HttpResponse("")
    return render(request, "account/_balance.html", {"org": org, "balances": account_balances(org)})


@login_required
@require_POST
def account_faucet(request):
    org, refused = _org_or_403(request)
    if refused is not None:
        return refused
    try:
        grant = faucet_claim(organization=org, actor=request.user)
    except MarketError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{tusd(grant.amount)} of test tUSD minted to your development wallet "
                                  f"{grant.wallet.address}.")
    nxt = request.POST.get("next", "")
    # Back where the button was (a job page's escrow panel), only within this site.
    if nxt.startswith("/") and not nxt.startswith("//"):
        return redirect(nxt)
    return redirect("account")


@login_required
@require_GET
def account_month_statement(request, year: int, month: int, fmt: str):
    org, refused = _org_or_403(request)
    if refused is not None:
        return refused
    if fmt not in FORMATS or not 1 <= month <= 12 or not 2000 <= year <= 9999:
        raise Http404("No such statement.")
    body = (month_statement_csv if fmt == "csv" else month_statement_pdf)(org, year, month)
    return _download(body, fmt, f"computemesh-{org.slug}-{year}-{month:02d}.{fmt}")


@login_required
@require_GET
def job_statement(request, pk: int, fmt: str):
    """A job's statement, for its owner's members only (anyone else: 404, as for the job)."""
    org = organization_of(request.user)
    if fmt not in FORMATS or org is None:
        raise Http404("No such statement.")
    job = get_object_or_404(jobs_with_statement(org), pk=pk)
    body = (job_statement_csv if fmt == "csv" else job_statement_pdf)(org, job)
    return _download(body, fmt, f"computemesh-job-{job.pk}.{fmt}")


def _download(body: bytes, fmt: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _month_param(value: str) -> tuple[int, int] | None:
    """"2026-12" → (2026, 12); anything else → None (all months)."""
    try:
        year, month = (int(part) for part in value.split("-"))
    except ValueError:
        return None
    if 2000 <= year <= 9999 and 1 <= month <= 12:
        return year, month
    return None

