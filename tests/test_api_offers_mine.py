"""GET /api/v1/offers/mine/: a provider's own offers, paused ones included (the public
search, GET /api/v1/offers/, lists active offers only)."""

import pytest

from marketplace.models import Offer

from .factories import OfferFactory

URL = "/api/v1/offers/mine/"
pytestmark = pytest.mark.django_db


@pytest.fixture
def offers(carol_node, dave_node):
    active = OfferFactory(node=carol_node)
    paused = OfferFactory(node=carol_node)
    Offer.objects.filter(pk=paused.pk).update(status=Offer.Status.PAUSED)
    other = OfferFactory(node=dave_node)
    return active, paused, other


def ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {o["id"] for o in response.json()["results"]}


def test_a_provider_sees_its_offers_paused_included_and_no_others(api, carol, dave, offers):
    active, paused, other = offers
    assert ids(api.as_user(carol).get(URL)) == {active.pk, paused.pk}
    assert ids(api.as_user(dave).get(URL)) == {other.pk}
    # The public search still hides the paused one, from its provider too.
    assert paused.pk not in ids(api.as_user(carol).get("/api/v1/offers/"))
    statuses = {o["id"]: o["status"] for o in api.as_user(carol).get(URL).json()["results"]}
    assert statuses == {active.pk: "active", paused.pk: "paused"}


def test_the_search_filters_apply(api, carol, offers):
    active, paused, _ = offers
    assert ids(api.as_user(carol).get(URL, {"min_gpus": 1, "ordering": "-price_per_gpu_hour"})) >= {active.pk}
    response = api.as_user(carol).get(URL, {"min_gpus": "many"})
    assert response.status_code == 400 and response.json()["field"] == "min_gpus"


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("admin_user", 403)])
def test_only_providers(request, api, offers, who, expected):
    user = None if who == "anonymous" else request.getfixturevalue(who)
    assert api.as_user(user).get(URL).status_code == expected
