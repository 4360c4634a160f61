"""MIN_STAKE_FOR_VERIFIED_TAGS: a job (or a search) that requires a verified compliance tag
finds only providers with at least that stake; the offer pages and the API show the stake."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace import catalogue
from marketplace.models import Assignment, Job
from marketplace.selectors.offer_search import OfferQuery, offer_search
from marketplace.services.batch_placement import jobs_place_waiting
from marketplace.services.job_spec import JobSpec, job_spec_validate
from marketplace.services.matching import quote_job

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db


def offer(price: str, stake: str, tags=("hipaa",)):
    mask = catalogue.compliance_mask(list(tags))
    node = NodeFactory(compliance_claimed=mask, compliance_verified=mask, reliability=Decimal("0.99"))
    return OfferFactory(node=node, price_per_gpu_hour=Decimal(price), provider_stake=Decimal(stake))


@pytest.fixture
def market():
    return {"unstaked": offer("1.00", "50"), "staked": offer("1.50", "150"),
            "untagged": offer("0.80", "0", tags=())}


def spec(**over) -> JobSpec:
    base = dict(name="q", template="image-classifier", dataset="sample:digits", nodes=1, gpus_per_node=1,
                max_price_per_gpu_hour=Decimal("3"), budget=Decimal("100"),
                deadline=timezone.now() + timedelta(days=1))
    return job_spec_validate(spec=JobSpec(**{**base, **over}), owner=None)


def test_the_search_needs_the_stake_only_for_verified_tags(settings, market):
    settings.MIN_STAKE_FOR_VERIFIED_TAGS = Decimal("100")
    found = set(offer_search(OfferQuery(compliance=("hipaa",))).values_list("pk", flat=True))
    assert found == {market["staked"].pk}
    # No tag asked for: the stake does not matter.
    assert offer_search(OfferQuery()).count() == 3
    settings.MIN_STAKE_FOR_VERIFIED_TAGS = Decimal("0")
    found = set(offer_search(OfferQuery(compliance=("hipaa",))).values_list("pk", flat=True))
    assert found == {market["staked"].pk, market["unstaked"].pk}


def test_the_quote_and_the_batch_matcher_skip_unstaked_providers(settings, market):
    settings.MIN_STAKE_FOR_VERIFIED_TAGS = Decimal("100")
    q = quote_job(spec=spec(compliance=("hipaa",)))
    assert [c.offer_id for c in q.candidates] == [market["staked"].pk]  # not the cheaper unstaked one
    assert [c.offer_id for c in quote_job(spec=spec()).candidates] == [market["untagged"].pk]

    job = JobFactory(status=Job.Status.FUNDED, compliance=["hipaa"])
    assert set(jobs_place_waiting()) == {job.pk}
    assert Assignment.objects.get(job=job).offer_id == market["staked"].pk


def test_the_api_filters_by_stake_and_shows_it(settings, api, market):
    settings.MIN_STAKE_FOR_VERIFIED_TAGS = Decimal("100")
    results = api.get("/api/v1/offers/?compliance=hipaa").json()["results"]
    assert [(o["id"], o["provider_stake"]) for o in results] == [(market["staked"].pk, "150.000000")]
    detail = api.get(f"/api/v1/offers/{market['unstaked'].pk}/").json()
    assert detail["provider_stake"] == "50.000000"


def test_the_offer_pages_show_the_stake(client, market):
    page = client.get(reverse("offers")).content.decode()
    assert "150.00 tUSD staked" in page and "50.00 tUSD staked" in page
    detail = client.get(reverse("offer_detail", args=[market["staked"].pk])).content.decode()
    assert "150.00 tUSD at stake" in detail
