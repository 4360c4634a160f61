"""/api/v1/offers/: the public search (filters, ordering, pagination, query count) and
providers' writes (create, update, pause, resume) with their authorization matrix."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from marketplace import catalogue
from marketplace.models import Node, Offer

from .api_support import ACTORS, actor, assert_error
from .factories import NodeFactory, OfferFactory

URL = "/api/v1/offers/"
pytestmark = pytest.mark.django_db


@pytest.fixture
def market(provider_org, other_provider_org):
    """Five offers that differ in every filtered attribute, labelled for assertions."""
    mask = catalogue.compliance_mask

    def offer(label, org, *, price, reserved=0, **node):
        n = NodeFactory(provider=org, name=label, **node)
        return OfferFactory(node=n, price_per_gpu_hour=Decimal(price), gpus_reserved=reserved)

    offers = {
        "a100-de": offer("a100-de", provider_org, price="2.10", reserved=2, gpu_model="A100 80GB",
                         gpu_count=8, gpu_memory_gb=80, region="EU-DE",
                         compliance_claimed=mask(["hipaa", "gdpr"]),
                         compliance_verified=mask(["hipaa", "gdpr"]),
                         reliability=Decimal("0.99")),
        "4090-fr": offer("4090-fr", provider_org, price="0.45", gpu_model="RTX 4090",
                         gpu_count=4, gpu_memory_gb=24, region="EU-FR",
                         compliance_claimed=mask(["gdpr", "hipaa"]),
                         compliance_verified=mask(["gdpr"]), reliability=Decimal("0.90"),
                         status=Node.Status.OFFLINE),
        "h100-sg": offer("h100-sg", other_provider_org, price="3.20", reserved=7,
                         gpu_model="H100 80GB", gpu_count=8, gpu_memory_gb=80, region="AP-SG",
                         reliability=None),
        "l40s-ca": offer("l40s-ca", other_provider_org, price="1.10", gpu_model="L40S",
                         gpu_count=2, gpu_memory_gb=48, region="US-CA",
                         compliance_claimed=mask(["hipaa", "soc2"]),
                         compliance_verified=mask(["hipaa", "soc2"]),
                         reliability=Decimal("0.95")),
        "cpu-se": offer("cpu-se", provider_org, price="0.05", gpu_model="cpu", gpu_count=16,
                        gpu_memory_gb=0, region="EU-SE", reliability=Decimal("0.80")),
    }
    paused = offer("l4-va-paused", other_provider_org, price="0.20", gpu_model="L4",
                   gpu_count=1, gpu_memory_gb=24, region="US-VA")
    Offer.objects.filter(pk=paused.pk).update(status=Offer.Status.PAUSED)
    return offers


def labels(response) -> list[str]:
    assert response.status_code == 200, response.content[:500]
    return [o["node_name"] for o in response.json()["results"]]


# --- The public search -----------------------------------------------------------------

@pytest.mark.parametrize("who", ACTORS)
def test_list_is_public_and_shows_only_active_offers(request, api, market, who):
    found = labels(api.as_user(actor(request, who)).get(URL))
    # Default order: cheapest first; the paused offer is never listed, even to its owner.
    assert found == ["cpu-se", "4090-fr", "l40s-ca", "a100-de", "h100-sg"]


def test_list_item_shape(api, market):
    item = next(o for o in api.get(URL).json()["results"] if o["node_name"] == "a100-de")
    offer = market["a100-de"]
    assert item == {
        "id": offer.pk, "node": offer.node_id, "node_name": "a100-de", "provider": "Nordic GPU",
        "gpu_model": "A100 80GB", "gpu_memory_gb": 80, "gpus_offered": 8, "gpus_available": 6,
        "price_per_gpu_hour": "2.100000", "unit": "tUSD/GPU-h", "region": "EU-DE",
        "region_name": "Germany", "compliance": ["hipaa", "gdpr"], "reliability": "0.9900",
        "is_new": False, "online": True, "provider_stake": "0.000000",
        "available_from": item["available_from"], "available_until": None,
        "min_duration_hours": "0.25", "max_duration_hours": None, "accepts_custom_code": False,
        "status": "active",
    }
    new = next(o for o in api.get(URL).json()["results"] if o["node_name"] == "h100-sg")
    assert new["reliability"] is None and new["is_new"] is True


@pytest.mark.parametrize(("query", "expected"), [
    ("gpu_model=A100 80GB", {"a100-de"}),
    ("gpu_model=A100 80GB&gpu_model=L40S", {"a100-de", "l40s-ca"}),
    ("gpu_model=cpu", {"cpu-se"}),
    # Free GPUs, not offered ones: h100-sg offers 8 but 7 are reserved.
    ("min_gpus=4", {"a100-de", "4090-fr", "cpu-se"}),
    ("min_gpus=2", {"a100-de", "4090-fr", "l40s-ca", "cpu-se"}),
    ("min_gpu_memory_gb=48", {"a100-de", "h100-sg", "l40s-ca"}),
    ("region=EU-DE", {"a100-de"}),
    ("region=EU", {"a100-de", "4090-fr", "cpu-se"}),
    ("region=EU-FR&region=US", {"4090-fr", "l40s-ca"}),
    ("compliance=hipaa", {"a100-de", "l40s-ca"}),  # 4090-fr claims hipaa, unverified
    ("compliance=hipaa&compliance=gdpr", {"a100-de"}),
    ("compliance=soc2&compliance=gdpr", set()),
    ("max_price=1.10", {"4090-fr", "l40s-ca", "cpu-se"}),
    ("min_reliability=0.95", {"a100-de", "l40s-ca"}),
    ("min_reliability=0", {"a100-de", "4090-fr", "l40s-ca", "cpu-se"}),  # new nodes excluded
    ("online=true", {"a100-de", "h100-sg", "l40s-ca", "cpu-se"}),
    ("online=false", {"4090-fr"}),
    ("region=EU&min_gpu_memory_gb=40&max_price=2.5&online=1", {"a100-de"}),
])
def test_filters(api, market, query, expected):
    assert set(labels(api.get(f"{URL}?{query}"))) == expected


@pytest.mark.parametrize(("query", "param"), [
    ("gpu_model=GTX 1080", "gpu_model"),
    ("region=XX-ZZ", "region"),
    ("region=Mars", "region"),
    ("compliance=pci", "compliance"),
    ("min_gpus=abc", "min_gpus"),
    ("min_gpus=0", "min_gpus"),
    ("min_gpus=99999999999999999999999", "min_gpus"),
    ("min_gpu_memory_gb=-1", "min_gpu_memory_gb"),
    ("max_price=cheap", "max_price"),
    ("max_price=0", "max_price"),
    ("max_price=-1", "max_price"),
    ("min_reliability=1.5", "min_reliability"),
    ("online=maybe", "online"),
    ("ordering=name", "ordering"),
    ("ordering=-token_hash", "ordering"),
])
def test_bad_filter_values_are_400_naming_the_parameter(api, market, query, param):
    data = assert_error(api.get(f"{URL}?{query}"), 400, param)
    assert data["detail"].startswith(f"{param}:")


def test_unknown_region_message_lists_the_known_ones(api, market):
    data = assert_error(api.get(f"{URL}?region=XX-ZZ"), 400, "region")
    assert "XX-ZZ" in data["detail"] and "EU-DE" in data["detail"]


@pytest.mark.parametrize(("ordering", "expected"), [
    ("price_per_gpu_hour", ["cpu-se", "4090-fr", "l40s-ca", "a100-de", "h100-sg"]),
    ("-price_per_gpu_hour", ["h100-sg", "a100-de", "l40s-ca", "4090-fr", "cpu-se"]),
    # Ties (80 GB twice) are broken by id: a100-de was created first.
    ("-gpu_memory_gb", ["a100-de", "h100-sg", "l40s-ca", "4090-fr", "cpu-se"]),
    ("gpu_memory_gb", ["cpu-se", "4090-fr", "l40s-ca", "a100-de", "h100-sg"]),
    # New nodes (no reliability yet) come last either way.
    ("-reliability", ["a100-de", "l40s-ca", "4090-fr", "cpu-se", "h100-sg"]),
    ("reliability", ["cpu-se", "4090-fr", "l40s-ca", "a100-de", "h100-sg"]),
    ("-gpu_memory_gb,price_per_gpu_hour", ["a100-de", "h100-sg", "l40s-ca", "4090-fr", "cpu-se"]),
    ("-gpu_memory_gb,-price_per_gpu_hour", ["h100-sg", "a100-de", "l40s-ca", "4090-fr",
                                            "cpu-se"]),
])
def test_ordering(api, market, ordering, expected):
    assert labels(api.get(f"{URL}?ordering={ordering}")) == expected


def test_pagination_shape_and_pages(api, market):
    first = api.get(f"{URL}?page_size=2").json()
    assert set(first) == {"count", "count_is_exact", "next", "previous", "results"}
    assert first["count"] == 5 and first["count_is_exact"] and first["previous"] is None
    assert [o["node_name"] for o in first["results"]] == ["cpu-se", "4090-fr"]
    second = api.get(first["next"]).json()
    assert [o["node_name"] for o in second["results"]] == ["l40s-ca", "a100-de"]
    third = api.get(second["next"]).json()
    assert [o["node_name"] for o in third["results"]] == ["h100-sg"]
    assert third["next"] is None and third["previous"]
    filtered = api.get(f"{URL}?region=EU&page_size=1&ordering=-price_per_gpu_hour").json()
    assert filtered["count"] == 3
    assert [o["node_name"] for o in filtered["results"]] == ["a100-de"]
    assert "region=EU" in filtered["next"]


def test_page_size_is_capped_and_bad_pages_are_404(api, provider_org):
    node = NodeFactory(provider=provider_org, gpu_count=64)
    for _ in range(3):
        OfferFactory(node=node, gpus_offered=1)
    assert len(api.get(f"{URL}?page_size=1000").json()["results"]) == 3
    assert_error(api.get(f"{URL}?page=99"), 404)
    assert_error(api.get(f"{URL}?page=abc"), 404)


def _offers(n: int, org, start: int = 0) -> None:
    for i in range(start, start + n):
        node = NodeFactory(provider=org, name=f"bulk-{org.pk}-{i}", region="EU-DE")
        OfferFactory(node=node, price_per_gpu_hour=Decimal("1") + Decimal(i) / 100)


@pytest.mark.parametrize("who", ["anonymous", "alice"])
def test_list_query_count_does_not_grow_with_offers(request, api, provider_org, who):
    client = api.as_user(actor(request, who))
    _offers(5, provider_org)
    with CaptureQueriesContext(connection) as few:
        assert len(labels(client.get(f"{URL}?region=EU&ordering=-reliability"))) == 5
    _offers(45, provider_org, start=5)
    with CaptureQueriesContext(connection) as many:
        assert len(labels(client.get(f"{URL}?region=EU&ordering=-reliability"))) == 20
    assert len(many) == len(few)
    # A COUNT and the page itself, plus the token's user and organization when logged in.
    assert len(many) <= (2 if who == "anonymous" else 5)


# --- Retrieve --------------------------------------------------------------------------

@pytest.mark.parametrize(("who", "active", "paused"), [
    ("anonymous", 200, 404), ("alice", 200, 404), ("bob", 200, 404),
    ("carol", 200, 200), ("dave", 200, 404), ("admin_user", 200, 404),
])
def test_retrieve_matrix(request, api, carol_offer, carol_node, who, active, paused):
    client = api.as_user(actor(request, who))
    response = client.get(f"{URL}{carol_offer.pk}/")
    assert response.status_code == active and response.json()["id"] == carol_offer.pk
    hidden = OfferFactory(node=NodeFactory(provider=carol_node.provider, name="hidden"),
                          status=Offer.Status.PAUSED)
    response = client.get(f"{URL}{hidden.pk}/")
    assert response.status_code == paused
    if paused == 200:
        assert response.json()["status"] == "paused"


def test_retrieve_unknown_and_out_of_range_ids_are_404(api, market):
    assert_error(api.get(f"{URL}999999/"), 404)
    assert api.get(f"{URL}{'9' * 30}/").status_code == 404


# --- Create ----------------------------------------------------------------------------

@pytest.fixture
def spare_node(provider_org):
    """A node of carol's with no offers yet."""
    return NodeFactory(provider=provider_org, name="carol-spare", gpu_model="L40S", gpu_count=4,
                       gpu_memory_gb=48, region="EU-NL")


def offer_body(target, **overrides):
    return {"node": target.pk, "gpus_offered": 2, "price_per_gpu_hour": "1.75", **overrides}


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 201), ("dave", 400),
    ("admin_user", 403),
])
def test_create_matrix(request, api, spare_node, who, expected):
    response = api.as_user(actor(request, who)).post(URL, offer_body(spare_node), format="json")
    assert response.status_code == expected, response.content
    if expected == 201:
        data = response.json()
        offer = Offer.objects.get(pk=data["id"])
        assert (offer.node_id, offer.gpus_offered, offer.price_per_gpu_hour) == (
            spare_node.pk, 2, Decimal("1.75"))
        # The search columns are copied from the node.
        assert (offer.gpu_model, offer.region, offer.provider_id) == (
            "L40S", "EU-NL", spare_node.provider_id)
        assert data["price_per_gpu_hour"] == "1.750000" and data["node_name"] == "carol-spare"
        assert data["status"] == "active"
    else:
        assert not Offer.objects.exists()
        if who == "dave":  # another provider's node is not one of his
            assert assert_error(response, 400, "node")["detail"] == "node: No node of yours has that id."


@pytest.mark.parametrize(("override", "field"), [
    ({"price_per_gpu_hour": "0"}, "price_per_gpu_hour"),
    ({"price_per_gpu_hour": "-1.5"}, "price_per_gpu_hour"),
    ({"price_per_gpu_hour": "abc"}, "price_per_gpu_hour"),
    ({"price_per_gpu_hour": "1.1234567"}, "price_per_gpu_hour"),
    ({"price_per_gpu_hour": "99999"}, "price_per_gpu_hour"),
    ({"price_per_gpu_hour": None}, "price_per_gpu_hour"),
    ({"gpus_offered": 0}, "gpus_offered"),
    ({"gpus_offered": -2}, "gpus_offered"),
    ({"gpus_offered": 5}, "gpus_offered"),  # the node has 4
    ({"gpus_offered": "two"}, "gpus_offered"),
    ({"node": 987654321}, "node"),
    ({"node": "x"}, "node"),
    ({"available_until": "2001-01-01T00:00:00Z"}, "available_until"),
    ({"available_from": "2031-01-01T00:00:00Z", "available_until": "2030-01-01T00:00:00Z"},
     "available_until"),
    ({"available_from": "next tuesday"}, "available_from"),
    ({"min_duration_hours": "0"}, "min_duration_hours"),
    ({"min_duration_hours": "4", "max_duration_hours": "2"}, "max_duration_hours"),
])
def test_create_bad_input_is_400_naming_the_field(api, carol, spare_node, override, field):
    response = api.as_user(carol).post(URL, offer_body(spare_node, **override), format="json")
    assert_error(response, 400, field)
    assert not Offer.objects.exists()


def test_create_missing_fields(api, carol, spare_node):
    data = assert_error(api.as_user(carol).post(URL, {"node": spare_node.pk}, format="json"), 400)
    assert set(data["errors"]) == {"gpus_offered", "price_per_gpu_hour"}
    assert not Offer.objects.exists()


def test_create_cannot_list_more_gpus_than_the_node_has_left(api, carol, spare_node):
    client = api.as_user(carol)
    assert client.post(URL, offer_body(spare_node, gpus_offered=3), format="json").status_code \
        == 201
    data = assert_error(client.post(URL, offer_body(spare_node, gpus_offered=2), format="json"),
                        400, "gpus_offered")
    assert "at most 1" in data["detail"]
    assert Offer.objects.count() == 1


def test_create_on_a_suspended_node_is_403(api, carol, spare_node):
    Node.objects.filter(pk=spare_node.pk).update(status=Node.Status.SUSPENDED)
    assert_error(api.as_user(carol).post(URL, offer_body(spare_node), format="json"), 403)
    assert not Offer.objects.exists()


def test_malformed_json_wrong_type_and_oversized_payloads(api, carol, spare_node, settings):
    client = api.as_user(carol)
    data = assert_error(client.post(URL, '{"node": 1, ', content_type="application/json"), 400)
    assert data["code"] == "parse_error"
    assert_error(client.post(URL, "node=1", content_type="text/plain"), 415)
    pad = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)
    huge = json.dumps({"node": spare_node.pk, "gpus_offered": 1, "price_per_gpu_hour": "1",
                       "pad": pad})
    assert_error(client.post(URL, huge, content_type="application/json"), 413)
    assert not Offer.objects.exists()


def test_form_encoded_bodies_work_too(api, carol, spare_node):
    response = api.as_user(carol).post(URL, offer_body(spare_node))
    assert response.status_code == 201


# --- Update, pause, resume -----------------------------------------------------------------

@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 200), ("dave", 404),
    ("admin_user", 403),
])
def test_patch_matrix(request, api, carol_offer, who, expected):
    response = api.as_user(actor(request, who)).patch(
        f"{URL}{carol_offer.pk}/", {"price_per_gpu_hour": "0.99"}, format="json")
    assert response.status_code == expected
    carol_offer.refresh_from_db()
    changed = carol_offer.price_per_gpu_hour == Decimal("0.99")
    assert changed is (expected == 200)
    if expected == 200:
        assert response.json()["price_per_gpu_hour"] == "0.990000"


def test_patch_keeps_unsent_fields_and_put_replaces(api, carol, carol_offer):
    client = api.as_user(carol)
    until = (timezone.now() + timedelta(days=30)).isoformat()
    response = client.patch(f"{URL}{carol_offer.pk}/", {"available_until": until,
                                                        "max_duration_hours": "48"},
                            format="json")
    assert response.status_code == 200
    carol_offer.refresh_from_db()
    assert carol_offer.price_per_gpu_hour == Decimal("1.5") and carol_offer.gpus_offered == 8
    assert carol_offer.max_duration_hours == Decimal("48")
    response = client.put(f"{URL}{carol_offer.pk}/", {"gpus_offered": 4,
                                                      "price_per_gpu_hour": "2"},
                          format="json")
    assert response.status_code == 200
    carol_offer.refresh_from_db()
    assert (carol_offer.gpus_offered, carol_offer.max_duration_hours,
            carol_offer.available_until) == (4, None, None)
    assert_error(client.put(f"{URL}{carol_offer.pk}/", {"gpus_offered": 4}, format="json"),
                 400, "price_per_gpu_hour")


@pytest.mark.parametrize(("body", "field"), [
    ({"price_per_gpu_hour": "-3"}, "price_per_gpu_hour"),
    ({"gpus_offered": 0}, "gpus_offered"),
    ({"gpus_offered": 9}, "gpus_offered"),
])
def test_patch_bad_input_changes_nothing(api, carol, carol_offer, body, field):
    assert_error(api.as_user(carol).patch(f"{URL}{carol_offer.pk}/", body, format="json"), 400,
                 field)
    carol_offer.refresh_from_db()
    assert (carol_offer.price_per_gpu_hour, carol_offer.gpus_offered) == (Decimal("1.5"), 8)


def test_patch_cannot_go_below_reserved_gpus(api, carol, carol_offer):
    Offer.objects.filter(pk=carol_offer.pk).update(gpus_reserved=6)
    data = assert_error(api.as_user(carol).patch(f"{URL}{carol_offer.pk}/", {"gpus_offered": 4},
                                                 format="json"), 400, "gpus_offered")
    assert "reserved" in data["detail"]


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 200), ("dave", 404),
    ("admin_user", 403),
])
def test_pause_and_resume_matrix(request, api, carol_offer, who, expected):
    client = api.as_user(actor(request, who))
    response = client.post(f"{URL}{carol_offer.pk}/pause/")
    assert response.status_code == expected
    carol_offer.refresh_from_db()
    assert carol_offer.status == ("paused" if expected == 200 else "active")
    Offer.objects.filter(pk=carol_offer.pk).update(status=Offer.Status.PAUSED)
    response = client.post(f"{URL}{carol_offer.pk}/resume/")
    assert response.status_code == expected
    carol_offer.refresh_from_db()
    assert carol_offer.status == ("active" if expected == 200 else "paused")


def test_paused_offer_leaves_the_public_list_and_returns(api, carol, carol_offer):
    client = api.as_user(carol)
    assert client.post(f"{URL}{carol_offer.pk}/pause/").json()["status"] == "paused"
    assert api.as_user(None).get(URL).json()["count"] == 0
    assert api.as_user(carol).post(f"{URL}{carol_offer.pk}/resume/").json()["status"] == "active"
    assert api.as_user(None).get(URL).json()["count"] == 1


def test_offers_cannot_be_deleted(api, carol, carol_offer):
    assert api.as_user(carol).delete(f"{URL}{carol_offer.pk}/").status_code == 405
    assert Offer.objects.filter(pk=carol_offer.pk).exists()


def test_the_count_stops_at_a_thousand_and_says_so(api, monkeypatch, market):
    from marketplace.api import pagination

    monkeypatch.setattr(pagination, "COUNT_CAP", 3)
    data = api.get(f"{URL}?page_size=2").json()
    assert (data["count"], data["count_is_exact"]) == (4, False)
    assert api.get(f"{URL}?region=EU").json()["count_is_exact"] is True


def test_the_list_renders_offers_exactly_as_the_detail_does(api, market):
    data = api.get(URL).json()
    rows = data["results"]
    assert rows and len(rows) == data["count"]  # the whole list on one page: the loop checks each
    for row in rows:
        assert api.get(f"{URL}{row['id']}/").json() == row


def test_create_reports_every_problem_of_the_terms_at_once(api, carol, spare_node):
    """Issue 18: the service finds all of them; `detail`/`field` name the first, `errors` each."""
    response = api.as_user(carol).post(URL, offer_body(spare_node, gpus_offered=99, min_duration_hours="4",
                                                       max_duration_hours="2"), format="json")
    data = assert_error(response, 400, "gpus_offered")
    assert set(data["errors"]) == {"gpus_offered", "max_duration_hours"}, data
    assert "shorter" in data["errors"]["max_duration_hours"][0]
    assert not Offer.objects.exists()
