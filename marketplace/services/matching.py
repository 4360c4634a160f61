"""Which offers could take a job now, at what cost, and why none when none fit.

Used by the quote endpoint and the job form; the execution work reserves capacity on top
of the same eligibility rules.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from .. import catalogue, runtimes
from ..models import Offer
from ..money import amount, round_half_up
from ..selectors.offer_search import free_at_least, in_regions, verified_for
from . import deadlines
from .job_spec import JobSpec


@dataclass(frozen=True)
class Constraint:
    code: str
    label: str  # completes "N offers …", e.g. "in EU", "with ≥ 40 GB GPU memory"
    q: Q


@dataclass
class Candidate:
    offer_id: int
    node_id: int
    node_name: str
    provider: str
    gpu_model: str
    gpu_memory_gb: int
    region: str
    gpus: int
    price_per_gpu_hour: Decimal
    reliability: Decimal | None
    estimated_cost: Decimal


@dataclass
class Quote:
    feasible: bool
    candidates: list[Candidate] = field(default_factory=list)
    estimated_cost: Decimal | None = None
    estimated_start: str | None = None
    reasons: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _fmt(value: Decimal) -> str:
    # The one display rule: a 0.0005 budget reads "0.0005", not "0.00".
    return amount(value)


def constraints_for(spec: JobSpec, *, now=None) -> list[Constraint]:
    """Each of the job's requirements as a filter on the offer search table, in the order
    a person would relax them last to first."""
    now = now or timezone.now()
    hours = spec.duration_hours
    out = [
        Constraint("online", "with a connected agent", Q(node_online=True)),
    ]
    if spec.wants_cpu:
        out.append(Constraint("gpu_model", "offering CPU slots", Q(gpu_model=catalogue.CPU)))
    elif spec.gpu_models:
        out.append(Constraint("gpu_model", f"with {' or '.join(spec.gpu_models)}",
                              Q(gpu_model__in=spec.gpu_models)))
    else:
        out.append(Constraint("gpu_model", "with GPUs", ~Q(gpu_model=catalogue.CPU)))
    if spec.regions:
        out.append(Constraint("region", f"in {' or '.join(spec.regions)}", in_regions(spec.regions)))
    if spec.min_gpu_memory_gb:
        out.append(Constraint("gpu_memory", f"with ≥ {spec.min_gpu_memory_gb} GB GPU memory",
                              Q(gpu_memory_gb__gte=spec.min_gpu_memory_gb)))
    if spec.compliance:
        out.append(Constraint("compliance", f"verified for {', '.join(spec.compliance)}",
                              verified_for(spec.compliance)))
    if spec.min_reliability:
        out.append(Constraint("reliability", f"with reliability ≥ {spec.min_reliability:.0%}",
                              Q(reliability__gte=spec.min_reliability)))
    unit = "CPU slot" if spec.wants_cpu else "GPU"
    plural = "s" if spec.gpus_per_node > 1 else ""
    out.append(Constraint("capacity", f"with {spec.gpus_per_node} free {unit}{plural} on one node",
                          free_at_least(spec.gpus_per_node)))
    out.append(Constraint(
        "availability", f"available now for {hours} h",
        Q(available_from__lte=now)
        & (Q(available_until__isnull=True) | Q(available_until__gte=now + timedelta(hours=float(hours))))
        & Q(min_duration_hours__lte=hours)
        & (Q(max_duration_hours__isnull=True) | Q(max_duration_hours__gte=hours))))
    if spec.runtime:
        # A code bundle runs only where the provider opted in, in the runtime it was written for.
        out.append(Constraint("custom_code", "accepting custom code (code bundles)",
                              Q(accepts_custom_code=True)))
        out.append(Constraint("runtime", f"offering runtime {spec.runtime}",
                              Q(node__runtime=spec.runtime)))
        if spec.nodes > 1:
            # Across nodes its sandbox shares the host's network: only agents that can confine
            # it to the job's peers run it (workers/agent/peer_firewall.py).
            out.append(Constraint("peer_firewall", "able to confine custom code to its peers",
                                  Q(node__peer_firewall=True)))
    out.append(Constraint("price", f"under {_fmt(spec.max_price_per_gpu_hour)} tUSD/GPU-h",
                          Q(price_per_gpu_hour__lte=spec.max_price_per_gpu_hour)))
    return out


def _base(spec: JobSpec) -> QuerySet[Offer]:
    qs = Offer.objects.filter(status=Offer.Status.ACTIVE)
    return qs


def offers_matching(spec: JobSpec, constraints: Iterable[Constraint]) -> QuerySet[Offer]:
    qs = _base(spec)
    for c in constraints:
        qs = qs.filter(c.q)
    return qs


def _pick(spec: JobSpec, qs: QuerySet[Offer], exclude_nodes: Iterable[int] = ()) -> list[Candidate]:
    """The cheapest offer on each of `spec.nodes` different nodes (lowest total price,
    since every node carries the same number of GPUs)."""
    picked: list[Candidate] = []
    seen = set(exclude_nodes)
    # Nodes rarely carry more than a couple of offers: looking at this many of the
    # cheapest rows finds `nodes` distinct ones without walking every match.
    limit = max(200, spec.nodes * 50)
    rows = (qs.select_related("node", "provider")
            .order_by("price_per_gpu_hour", "-reliability", "id")[:limit])
    for offer in rows:
        if offer.node_id in seen:
            continue
        seen.add(offer.node_id)
        cost = round_half_up(offer.price_per_gpu_hour * spec.gpus_per_node * spec.duration_hours)
        picked.append(Candidate(
            offer_id=offer.pk, node_id=offer.node_id, node_name=offer.node.name,
            provider=offer.provider.name, gpu_model=offer.gpu_model,
            gpu_memory_gb=offer.gpu_memory_gb, region=offer.region, gpus=spec.gpus_per_node,
            price_per_gpu_hour=offer.price_per_gpu_hour, reliability=offer.reliability,
            estimated_cost=cost))
        if len(picked) == spec.nodes:
            break
    return picked


COUNT_CAP = 1000


def _nodes_matching(qs: QuerySet[Offer]) -> int:
    """Distinct nodes, counted up to COUNT_CAP + 1 (explanations say "1,000+")."""
    return qs.order_by().values("node_id").distinct()[: COUNT_CAP + 1].count()


def _n(count: int) -> str:
    return f"{COUNT_CAP:,}+" if count > COUNT_CAP else f"{count:,}"


def _deadline_reason(spec: JobSpec, now) -> dict | None:
    """The job's deadlines leave it too little time (services/deadlines.py); before funding,
    its escrow's reclaim deadline is the one funding will set."""
    if spec.deadline is None:
        return None
    escrow_deadline = (spec.deadline + timedelta(seconds=settings.ESCROW_RECLAIM_AFTER_S)
                       if settings.ESCROW_ENABLED else None)
    need = deadlines.needed_s(budget_left=spec.budget, max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
                              gpus=spec.nodes * spec.gpus_per_node, duration_hours=spec.duration_hours)
    return deadlines.shortfall_reason(until=deadlines.stop_by(deadline=spec.deadline,
                                                              escrow_deadline=escrow_deadline),
                                      now=now, need_s=need, escrowed=escrow_deadline is not None)


def quote_job(*, spec: JobSpec) -> Quote:
    now = timezone.now()
    if (late := _deadline_reason(spec, now)) is not None:
        return Quote(feasible=False, reasons=[late])
    constraints = constraints_for(spec, now=now)
    picked = _pick(spec, offers_matching(spec, constraints))
    if len(picked) == spec.nodes:
        total = round_half_up(sum((c.estimated_cost for c in picked), Decimal(0)))
        quote = Quote(feasible=True, candidates=picked, estimated_cost=total,
                      estimated_start=now.isoformat())
        if total > spec.budget:
            quote.feasible = False
            quote.reasons.append({
                "code": "over_budget", "constraint": "budget",
                "message": f"The estimated cost {_fmt(total)} tUSD for {spec.duration_hours} h "
                           f"exceeds your budget of {_fmt(spec.budget)} tUSD. Raise the budget "
                           "or shorten the job.",
            })
        return quote
    return Quote(feasible=False, reasons=_explain(spec, constraints))


def _explain(spec: JobSpec, constraints: list[Constraint]) -> list[dict]:
    """A funnel ("40 active offers → 12 in EU → 0 with ≥ 40 GB …") and, for each
    constraint that blocks, what would fit without it."""
    need = spec.nodes
    what = "nodes" if need > 1 else "node"
    total = _nodes_matching(_base(spec))
    steps = [f"{_n(total)} {'node has' if total == 1 else 'nodes have'} active offers"]
    qs = _base(spec)
    blocking = None
    for c in constraints:
        qs = qs.filter(c.q)
        n = _nodes_matching(qs)
        steps.append(f"{_n(n) if n else 'none'} {c.label}")
        if n < need:
            blocking = c
            break
    reasons = [{
        "code": "no_match", "constraint": blocking.code if blocking else "",
        "message": (f"You need {need} {what}; " + " → ".join(steps) + "."),
    }]
    if blocking is not None and blocking.code == "runtime":
        reasons.append(_runtime_reason(spec))
    for c in constraints:
        others = [o for o in constraints if o is not c]
        alt = _pick(spec, offers_matching(spec, others))
        if len(alt) < need:
            continue
        cheapest = alt[0]
        if c.code == "price":
            top = max(a.price_per_gpu_hour for a in alt)
            message = (f"The cheapest placement that meets every other constraint costs up to "
                       f"{_fmt(top)} tUSD/GPU-h (your maximum is "
                       f"{_fmt(spec.max_price_per_gpu_hour)}).")
        elif c.code == "runtime":
            continue  # said by _runtime_reason: relaxing it would run the code where it fails
        elif c.code == "peer_firewall":
            message = (f"{len(alt)} {what} meet{'s' if len(alt) == 1 else ''} every other "
                       "constraint, but their agents cannot confine a multi-node job's code to its "
                       "peers (the sandbox's peers firewall needs an agent running as root with "
                       "nftables and cgroup v2); a multi-node code bundle runs only where they can. "
                       "On one node it needs no firewall.")
        elif c.code == "custom_code":
            message = (f"{len(alt)} {what} meet{'s' if len(alt) == 1 else ''} every other "
                       "constraint, but their providers do not accept custom code on those offers "
                       "(a provider opts in per offer); a code bundle runs only where they do.")
        elif c.code == "online":
            message = (f"{len(alt)} matching {what} {'exist' if len(alt) > 1 else 'exists'} but "
                       f"{'their agents are' if len(alt) > 1 else 'its agent is'} not connected right "
                       "now; the job will wait until "
                       f"{'they are' if len(alt) > 1 else 'it is'}.")
        else:
            message = (f"Cheapest that fits without the {c.code.replace('_', ' ')} constraint: "
                       f"{cheapest.gpu_model} ({cheapest.gpu_memory_gb} GB) in {cheapest.region} "
                       f"at {_fmt(cheapest.price_per_gpu_hour)} tUSD/GPU-h from {cheapest.provider}.")
        reasons.append({"code": "relax", "constraint": c.code, "message": message})
    return reasons


def _runtime_reason(spec: JobSpec) -> dict:
    """Why no node has the runtime the job's code bundle needs, and what they have."""
    offered = sorted(set(Offer.objects.filter(status=Offer.Status.ACTIVE, accepts_custom_code=True)
                         .exclude(node__runtime="").values_list("node__runtime", flat=True)))
    have = (f"Nodes accepting custom code offer {', '.join(offered[:8])}" if offered
            else "No node accepting custom code reports a runtime yet")
    if spec.runtime not in runtimes.runtimes():
        known = ", ".join(runtimes.runtimes())
        message = (f"Your code bundle needs runtime {spec.runtime}, which this platform does not "
                   f"list (it lists {known}); no provider offers it. {have}. Declare one of "
                   "those in the bundle's computemesh.toml and upload it again.")
    else:
        message = (f"Your code bundle needs runtime {spec.runtime}; no node that meets the other "
                   f"constraints offers it. {have}.")
    return {"code": "runtime", "constraint": "runtime", "message": message}
