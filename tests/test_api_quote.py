"""POST /api/v1/jobs/quote/: candidates and cost when a job fits, the blocking constraint
and what would fit without it when it does not. Quotes write nothing."""

from decimal import Decimal

import pytest

from marketplace import catalogue
from marketplace.models import Job, Node

from .api_support import ACTORS, actor, assert_error, job_body
from .factories import NodeFactory, OfferFactory

URL = "/api/v1/jobs/quote/"
pytestmark = pytest.mark.django_db


@pytest.fixture
def market(provider_org, other_provider_org):
    hipaa = catalogue.compliance_mask(["hipaa"])

    def offer(name, org, price, **node):
        return OfferFactory(node=NodeFactory(provider=org, name=name, **node),
                            price_per_gpu_hour=Decimal(price))

    return {
        "de-a100": offer("de-a100", provider_org, "2.00", gpu_model="A100 80GB", gpu_count=8,
                         gpu_memory_gb=80, region="EU-DE", compliance_claimed=hipaa,
                         compliance_verified=hipaa, reliability=Decimal("0.98")),
        "fr-4090": offer("fr-4090", provider_org, "0.50", gpu_model="RTX 4090", gpu_count=4,
                         gpu_memory_gb=24, region="EU-FR", reliability=Decimal("0.90")),
        "sg-h100": offer("sg-h100", other_provider_org, "1.80", gpu_model="H100 80GB",
                         gpu_count=8, gpu_memory_gb=80, region="AP-SG",
                         reliability=Decimal("0.97")),
        "us-off": offer("us-off", other_provider_org, "0.30", gpu_model="L40S", gpu_count=4,
                        gpu_memory_gb=48, region="US-CA", status=Node.Status.OFFLINE),
    }


def quote(client, **overrides):
    response = client.post(URL, job_body(**overrides), format="json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.parametrize("who", ACTORS)
def test_quote_is_open_to_everyone_and_writes_nothing(request, api, market, who):
    data = quote(api.as_user(actor(request, who)))
    assert data["feasible"] is True
    assert not Job.objects.exists()


def test_feasible_quote_picks_the_cheapest_nodes_and_prices_them(api, market):
    data = quote(api, nodes=2, gpus_per_node=2, duration_hours="3", max_price_per_gpu_hour="2.5")
    assert set(data) == {"feasible", "candidates", "estimated_cost", "estimated_start", "reasons",
                         "sync", "traffic_vs_ddp", "verification"}
    # A template seeds everything it draws: replayed, no determinism check to wait for.
    assert data["verification"]["method"] == "replay" and data["verification"]["determinism"] is None
    assert [c["node_name"] for c in data["candidates"]] == ["fr-4090", "sg-h100"]
    first = data["candidates"][0]
    assert first["price_per_gpu_hour"] == "0.500000" and first["gpus"] == 2
    assert first["estimated_cost"] == "3.000000"  # 0.50 × 2 GPUs × 3 h
    # 0.50×2×3 + 1.80×2×3
    assert data["estimated_cost"] == "13.800000"
    assert data["estimated_start"] and data["reasons"] == []


def test_constraints_narrow_the_candidates(api, market):
    data = quote(api, regions=["EU"], compliance=["hipaa"])
    assert [c["node_name"] for c in data["candidates"]] == ["de-a100"]
    data = quote(api, gpu_models=["H100 80GB"])
    assert [c["node_name"] for c in data["candidates"]] == ["sg-h100"]


def test_memory_constraint_is_named_with_the_cheapest_alternative(api, market):
    data = quote(api, min_gpu_memory_gb=100)
    assert data["feasible"] is False and data["candidates"] == []
    assert data["estimated_cost"] is None
    funnel = data["reasons"][0]
    assert funnel["code"] == "no_match" and funnel["constraint"] == "gpu_memory"
    assert "≥ 100 GB GPU memory" in funnel["message"]
    relax = {r["constraint"]: r["message"] for r in data["reasons"] if r["code"] == "relax"}
    assert "RTX 4090" in relax["gpu_memory"] and "0.50 tUSD/GPU-h" in relax["gpu_memory"]


def test_region_constraint_is_named(api, market):
    data = quote(api, regions=["SA"])
    assert data["feasible"] is False
    assert data["reasons"][0]["constraint"] == "region"
    assert "in SA" in data["reasons"][0]["message"]
    relax = {r["constraint"]: r["message"] for r in data["reasons"] if r["code"] == "relax"}
    assert "without the region constraint" in relax["region"]


def test_price_constraint_says_what_it_would_cost(api, market):
    data = quote(api, regions=["EU-DE"], max_price_per_gpu_hour="1.00")
    assert data["feasible"] is False
    assert data["reasons"][0]["constraint"] == "price"
    relax = {r["constraint"]: r["message"] for r in data["reasons"] if r["code"] == "relax"}
    assert "2.00 tUSD/GPU-h" in relax["price"] and "1.00" in relax["price"]


def test_offline_nodes_are_explained(api, market):
    data = quote(api, regions=["US"])
    assert data["feasible"] is False
    # The funnel drops offline nodes first, so the US step is the one that empties it ...
    assert "none in US" in data["reasons"][0]["message"]
    # ... and the alternatives say that a US node exists but is offline.
    relax = {r["constraint"]: r["message"] for r in data["reasons"] if r["code"] == "relax"}
    assert "not connected" in relax["online"]


def test_over_budget(api, market):
    data = quote(api, budget="0.50", gpus_per_node=2, duration_hours="2")
    assert data["feasible"] is False and len(data["candidates"]) == 1
    assert data["estimated_cost"] == "2.000000"
    assert data["reasons"] == [{"code": "over_budget", "constraint": "budget",
                                "message": data["reasons"][0]["message"]}]
    assert "budget" in data["reasons"][0]["message"]


def test_empty_market(api, db):
    data = quote(api)
    assert data["feasible"] is False
    assert data["reasons"][0]["message"].startswith("You need 1 node; 0 nodes have active offers")


@pytest.mark.parametrize(("override", "field"), [
    ({"deadline": "2001-01-01T00:00:00Z"}, "deadline"),
    ({"nodes": 0}, "nodes"),
    ({"regions": ["XX-ZZ"]}, "regions"),
    ({"template": "nope"}, "template"),
    ({"max_price_per_gpu_hour": "-1"}, "max_price_per_gpu_hour"),
    ({"name": "q" * 10_000}, "name"),
])
def test_quote_bad_input_is_400(api, market, override, field):
    assert_error(api.post(URL, job_body(**override), format="json"), 400, field)


def test_anonymous_cannot_quote_with_an_uploaded_dataset(api, market, alice, settings, tmp_path):
    from .test_api_datasets import csv_bytes, upload

    settings.MEDIA_ROOT = tmp_path
    dataset_id = upload(api.as_user(alice), csv_bytes()).json()["id"]
    assert quote(api.as_user(alice), dataset=str(dataset_id))["feasible"] is True
    assert_error(api.as_user(None).post(URL, job_body(dataset=str(dataset_id)), format="json"),
                 400, "dataset")


def test_quote_bad_bodies(api, market):
    assert_error(api.post(URL, "{", content_type="application/json"), 400)
    assert_error(api.post(URL, "x", content_type="text/plain"), 415)
