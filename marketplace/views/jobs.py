from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from .. import catalogue, job_states
from ..errors import MarketError
from ..forms import JobForm, QuoteForm
from ..models import Job, Offer
from ..money import is_whole_micro, tusd
from ..selectors.account import job_disputes
from ..selectors.accounts import organization_of
from ..selectors.budget import budget_view
from ..selectors.checkpoints import partial_result
from ..selectors.determinism import job_verification_method
from ..selectors.execution import job_assignments, job_progress
from ..selectors.job_status import STATUS_FILTERS, job_state, jobs_filtered, with_ending
from ..selectors.live import cost_so_far
from ..selectors.market import offers_visible_to
from ..selectors.ownership import JobAction, is_job_owner, jobs_for, jobs_visible_to
from ..selectors.payments import job_escrow
from ..selectors.transactions import transaction_view
from ..selectors.verification import job_model_downloadable, job_verification_report
from ..services import funding
from ..services.budget import job_budget_raise
from ..services.determinism import quote_verification
from ..services.disputes import DISPUTABLE, consumer_dispute_open
from ..services.faucet import faucet_available
from ..services.job_spec import job_spec_validate, sync_traffic_ratio
from ..services.jobs import job_cancel, job_submit
from ..services.matching import quote_job
from .common import org_required
from .job_rows import with_money

# Query parameters an offer page may pass to prefill the job form.
PREFILL = ("template", "gpu_models", "regions", "min_gpu_memory_gb", "max_price_per_gpu_hour",
           "compliance")


def _offer_prefill(offer: Offer) -> dict:
    """The job form for "Use this offer": one machine like it, at most its price."""
    gpus = offer.gpus_available if offer.node_online and offer.gpus_available else offer.gpus_offered
    return {"gpu_models": [offer.gpu_model], "regions": offer.region, "nodes": 1,
            "gpus_per_node": gpus, "max_price_per_gpu_hour": offer.price_per_gpu_hour}


def _prefill(request) -> dict:
    initial: dict = {}
    offer_id = request.GET.get("offer", "")
    if offer_id.isdigit():
        offer = offers_visible_to(request.user).filter(pk=int(offer_id)).first()
        if offer is None:
            messages.warning(request, "That offer is no longer listed; the form is not prefilled.")
        else:
            initial.update(_offer_prefill(offer))
            messages.info(request, f"Prefilled from offer #{offer.pk}: 1 machine with "
                                   f"{initial['gpus_per_node']} × {offer.gpu_model} in "
                                   f"{offer.region}, at most {tusd(offer.price_per_gpu_hour)} "
                                   "per GPU-hour. The quote says whether it is free now.")
    for key in PREFILL:
        values = request.GET.getlist(key)
        if not values:
            continue
        initial[key] = values if key in ("gpu_models", "compliance") else values[0]
    return initial


@org_required("consumer")
def job_new(request):
    if request.method == "POST":
        form = JobForm(request.POST, organization=request.org)
        if form.is_valid():
            try:
                job = job_submit(owner=request.org, spec=form.to_spec(), actor=request.user)
            except MarketError as exc:
                form.add_market_error(exc)
            else:
                nxt = ("Fund its escrow to start matching." if settings.ESCROW_ENABLED
                       else "The platform is looking for machines for it now.")
                messages.success(request, f"Job “{job.name}” submitted. {nxt}")
                return redirect("job_detail", pk=job.pk)
    else:
        form = JobForm(initial=_prefill(request), organization=request.org)
    return render(request, "jobs/new.html", {
        "form": form, "templates": catalogue.templates().values(),
        "region_codes": list(catalogue.REGION_BLOCS) + list(catalogue.REGIONS),
    })


@org_required("consumer")
@require_GET
def job_template_fields(request):
    """The dataset and hyper-parameter fields for the chosen template (htmx swap)."""
    form = JobForm(initial={"template": request.GET.get("template")}, organization=request.org)
    response = render(request, "jobs/_template_fields.html", {"form": form})
    # Ask the quote panel to refresh once the new fields are in the page.
    response["HX-Trigger-After-Settle"] = "quote-refresh"
    return response


@org_required("consumer")
@require_POST
def job_quote(request):
    """The live quote panel: validates like a submission, writes nothing."""
    form = QuoteForm(request.POST, organization=request.org)
    quote, error, spec, verification = None, None, None, None
    if form.is_valid():
        try:
            spec = job_spec_validate(spec=form.to_spec(name_fallback="quote"), owner=request.org)
            quote = quote_job(spec=spec)
            verification = quote_verification(spec=spec)
        except MarketError as exc:
            form.add_market_error(exc)
            error = exc
    problems = [(form.fields[n].label if n in form.fields else "", e)
                for n, errs in form.errors.items() for e in errs]
    return render(request, "jobs/_quote.html", {
        "quote": quote, "problems": problems, "error": error, "verification": verification,
        "hours": form.cleaned_data.get("duration_hours") if quote else None,
        "sync": spec.sync if quote else None,
        "traffic_ratio": sync_traffic_ratio(spec.sync, nodes=spec.nodes, gpus_per_node=spec.gpus_per_node)
        if quote else None,
    })


@login_required
@require_GET
def job_list(request):
    status = request.GET.get("status", "")
    status = status if status in STATUS_FILTERS else ""
    search = request.GET.get("q", "").strip()[:120]
    jobs = list(jobs_filtered(jobs_visible_to(request.user), status=status, search=search)
                .select_related("owner", "escrow", "settlement")
                .prefetch_related("assignments", "disputes")[:200])
    return render(request, "jobs/list.html", {
        "jobs": [with_money(job) for job in jobs], "status": status, "search": search,
        "status_filters": [(key, label) for key, (label, _) in STATUS_FILTERS.items()],
        "filtered": bool(status or search),
    })


@login_required
def job_detail(request, pk: int):
    job = get_object_or_404(with_ending(jobs_visible_to(request.user)).select_related("owner", "created_by"),
                            pk=pk)
    template = catalogue.templates().get(job.template)
    return render(request, "jobs/detail.html", {
        "job": job, "template": template,
        "events": job.events.select_related("actor"),
        "can_cancel": job.status in job_states.CANCELLABLE,
        "can_raise_budget": is_job_owner(request.user, job) and job.status not in Job.Status.TERMINAL,
        "budget_error": request.session.pop(_budget_error_key(job.pk), None),
        "verification": job_verification_report(job),
        "verification_method": job_verification_method(job),
        **_dispute_context(request, job),
        **_progress_context(job, request.user), **_escrow_context(request, job),
    })


@login_required
@require_GET
def job_verification_method_view(request, pk: int):
    """How the job's work is verified (htmx: the job page asks while the check runs)."""
    job = get_object_or_404(jobs_visible_to(request.user), pk=pk)
    return render(request, "jobs/_verification_method.html",
                  {"job": job, "method": job_verification_method(job)})


def _dispute_context(request, job) -> dict:
    mine = is_job_owner(request.user, job)
    disputes = list(job_disputes(job)) if mine or request.user.is_staff else []
    return {"disputes": disputes,
            "can_dispute": (mine and job.status in DISPUTABLE
                            and not any(d.status == "open" for d in disputes)),
            "dispute_error": request.session.pop(f"job_dispute_error_{job.pk}", None),
            "dispute_reason": request.session.pop(f"job_dispute_reason_{job.pk}", "")}


@login_required
@require_POST
def job_dispute_view(request, pk: int):
    """The owner disputes a completed job; the reason goes to staff (services/disputes.py)."""
    job = get_object_or_404(jobs_for(request.user, JobAction.OWN), pk=pk)
    try:
        dispute = consumer_dispute_open(job=job, actor=request.user, reason=request.POST.get("reason", ""))
    except MarketError as exc:
        request.session[f"job_dispute_error_{job.pk}"] = exc.message
        request.session[f"job_dispute_reason_{job.pk}"] = request.POST.get("reason", "")[:2000]
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Dispute #{dispute.pk} opened; staff will review it.")
    return redirect(reverse("job_detail", args=[job.pk]) + "#dispute")


def _escrow_context(request, job) -> dict:
    escrow = job_escrow(job)
    org = organization_of(request.user)
    mine = is_job_owner(request.user, job)
    return {"escrow": escrow,
            "can_fund": bool(escrow) and mine and job.status == job.Status.SUBMITTED
                        and escrow["status"] == "unfunded",
            "can_top_up": bool(escrow) and mine and funding.top_up_due(job),
            "has_custodial": mine and org.wallets.filter(kind="custodial").exists(),
            # Only where a funding button shows: the check may ask the chain for its id.
            "faucet": mine and bool(escrow) and escrow["status"] == "unfunded" and faucet_available()}


@login_required
@require_POST
def job_fund_view(request, pk: int):
    job = get_object_or_404(jobs_for(request.user, JobAction.OWN), pk=pk)
    try:
        funding.job_fund(job=job, actor=request.user)
    except MarketError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Funding sent to the chain; the job starts once it is confirmed.")
    return redirect("job_detail", pk=job.pk)


@login_required
def chain_tx(request, tx_hash: str):
    """A transaction the platform sent or saw, for the links on job pages and payouts."""
    return render(request, "chain/tx.html", transaction_view(tx_hash[:80], request.user))


def _partial_result(job, user):
    """The newest trusted checkpoint, for the job's organization and staff, where the model
    is not (yet) there to download instead."""
    if not (user.is_staff or is_job_owner(user, job)) or job_model_downloadable(job, user):
        return None
    return partial_result(job.pk)


def _progress_context(job, user) -> dict:
    spent = cost_so_far(job)
    state = job_state(job, spent=spent)
    return {"progress": job_progress(job), "assignments": job_assignments(job),
            "model_downloadable": job_model_downloadable(job, user),
            "partial_result": _partial_result(job, user),
            "active": job.status in Job.Status.ACTIVE, "cost_so_far": spent,
            "spend": budget_view(job, spent=spent), "state": state}


@login_required
@require_POST
def job_budget_view(request, pk: int):
    """Raise the budget (the owner's organization): with the escrow off a paused job resumes;
    with it on, the escrow panel then offers the top-up."""
    job = get_object_or_404(jobs_for(request.user, JobAction.OWN), pk=pk)
    error = None
    try:
        value = Decimal(request.POST.get("budget", "").strip().replace(",", ""))
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        error = "The budget must be an amount in tUSD, e.g. 25 or 25.50."
    elif not is_whole_micro(value):
        error = "The budget can have at most 6 decimal places (0.000001 tUSD is the smallest amount)."
    elif value < job.budget:
        error = f"The budget can only be raised: enter {tusd(job.budget)} or more."
    if error is None:
        try:
            job = job_budget_raise(job=job, budget=value, actor=request.user)
        except MarketError as exc:
            error = exc.message
        else:
            messages.success(request, f"Budget raised to {tusd(job.budget)}.")
    if error is not None:
        # Shown under the budget field (and at the top of the page), not only as a banner.
        request.session[_budget_error_key(job.pk)] = error
        messages.error(request, error)
    return redirect("job_detail", pk=job.pk)


def _budget_error_key(pk: int) -> str:
    return f"job_budget_error_{pk}"


@login_required
def job_progress_view(request, pk: int):
    """The progress panel alone: the page without JavaScript, and a refresh after a status change."""
    job = get_object_or_404(jobs_visible_to(request.user), pk=pk)
    return render(request, "jobs/_live_panels.html", {"job": job, **_progress_context(job, request.user),
                                                      **_escrow_context(request, job)})


@login_required
@require_POST
def job_cancel_view(request, pk: int):
    job = get_object_or_404(jobs_visible_to(request.user), pk=pk)
    try:
        job_cancel(job=job, actor=request.user)
    except MarketError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Job cancelled.")
    return redirect("job_detail", pk=job.pk)
