"""The quote: which offers would take a job now, what it costs, and why none fit."""

from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from marketplace import catalogue
from marketplace.models import Node
from marketplace.services.job_spec import JobSpec, job_spec_validate
from marketplace.services.matching import quote_job

from .factories import NodeFactory, OfferFactory


def spec(**over) -> JobSpec:
    base = dict(name="q", template="image-classifier", dataset="sample:digits", nodes=1,
                gpus_per_node=1, max_price_per_gpu_hour=Decimal("3"), budget=Decimal("100"),
                deadline=timezone.now() + timedelta(days=1))
    return job_spec_validate(spec=JobSpec(**{**base, **over}), owner=None)


def offer(price, *, model="A100 80GB", memory=80, region="EU-DE", gpus=8, online=True,
          reliability=Decimal("0.99"), tags=(), **kw):
    node = NodeFactory(gpu_model=model, gpu_memory_gb=memory, region=region, gpu_count=gpus,
                       status=Node.Status.ONLINE if online else Node.Status.OFFLINE,
                       reliability=reliability,
                       compliance_claimed=catalogue.compliance_mask(list(tags)),
                       compliance_verified=catalogue.compliance_mask(list(tags)))
    return OfferFactory(node=node, price_per_gpu_hour=Decimal(price), **kw)


def test_picks_the_cheapest_distinct_nodes_and_prices_them(db):
    a = offer("1.10", region="EU-FR")
    offer("0.90", model="RTX 4090", memory=24, region="US-CA")
    c = offer("1.40", region="EU-DE")
    offer("1.20", region="EU-NL", online=False)
    q = quote_job(spec=spec(nodes=2, gpus_per_node=4, regions=("EU",), min_gpu_memory_gb=40,
                            duration_hours=Decimal("2")))
    assert q.feasible
    assert [x.offer_id for x in q.candidates] == [a.pk, c.pk]
    # 4 GPUs × 2 h × (1.10 + 1.40)
    assert q.estimated_cost == Decimal("20.000000")


def test_two_offers_on_one_node_count_once(db):
    first = offer("1.00", gpus=8)
    OfferFactory(node=first.node, price_per_gpu_hour=Decimal("1.05"), gpus_offered=4)
    q = quote_job(spec=spec(nodes=2))
    assert not q.feasible
    assert q.reasons[0]["code"] == "no_match"


def test_explains_the_blocking_constraint_and_the_alternative(db):
    offer("1.00", model="RTX 4090", memory=24, region="EU-DE")
    offer("1.50", model="A100 80GB", memory=80, region="US-TX")
    q = quote_job(spec=spec(regions=("EU",), min_gpu_memory_gb=40))
    assert not q.feasible
    funnel = q.reasons[0]
    assert funnel["constraint"] == "gpu_memory"
    assert "1 in EU" in funnel["message"] and "none with ≥ 40 GB GPU memory" in funnel["message"]
    alternatives = {r["constraint"]: r["message"] for r in q.reasons[1:]}
    assert "US-TX" in alternatives["region"] and "1.50" in alternatives["region"]
    assert "RTX 4090" in alternatives["gpu_memory"]


def test_price_reason_names_the_price_that_would_fit(db):
    offer("2.40")
    q = quote_job(spec=spec(max_price_per_gpu_hour=Decimal("2")))
    assert not q.feasible
    price = next(r for r in q.reasons if r["code"] == "relax" and r["constraint"] == "price")
    assert "2.40" in price["message"] and "2.00" in price["message"]


def test_offline_nodes_are_explained_not_matched(db):
    offer("1.00", online=False)
    q = quote_job(spec=spec())
    assert not q.feasible and q.reasons[0]["constraint"] == "online"
    assert any("not connected" in r["message"] for r in q.reasons)


def test_compliance_requires_verified_tags(db):
    claimed_only = offer("1.00")
    claimed_only.node.compliance_claimed = catalogue.compliance_mask(["hipaa"])
    claimed_only.node.save()
    verified = offer("1.80", tags=("hipaa", "gdpr"))
    q = quote_job(spec=spec(compliance=("hipaa",)))
    assert [c.offer_id for c in q.candidates] == [verified.pk]


def test_cpu_jobs_match_only_cpu_nodes_and_gpu_jobs_never_do(db):
    cpu = offer("0.05", model="cpu", memory=0, gpus=4)
    gpu = offer("1.00")
    assert [c.offer_id for c in quote_job(spec=spec(gpu_models=("cpu",))).candidates] == [cpu.pk]
    assert [c.offer_id for c in quote_job(spec=spec()).candidates] == [gpu.pk]


def test_new_nodes_are_excluded_by_min_reliability(db):
    offer("0.50", reliability=None)
    solid = offer("0.90", reliability=Decimal("0.97"))
    q = quote_job(spec=spec(min_reliability=Decimal("0.95")))
    assert [c.offer_id for c in q.candidates] == [solid.pk]


def test_capacity_and_availability_window(db):
    busy = offer("0.50", gpus=4)
    busy.gpus_reserved = 4
    busy.save()
    offer("0.60", available_until=timezone.now() + timedelta(minutes=30))
    offer("0.70", max_duration_hours=Decimal("0.5"))
    fits = offer("0.80")
    q = quote_job(spec=spec(duration_hours=Decimal("1")))
    assert [c.offer_id for c in q.candidates] == [fits.pk]


def test_over_budget_is_not_feasible_and_says_so(db):
    offer("2.00")
    q = quote_job(spec=spec(gpus_per_node=8, duration_hours=Decimal("10"), budget=Decimal("100")))
    assert not q.feasible and q.estimated_cost == Decimal("160.000000")
    assert q.reasons[0]["code"] == "over_budget" and "160.00" in q.reasons[0]["message"]
