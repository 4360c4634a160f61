"""Home, offers browser (filters, htmx partial, pagination) and offer detail pages."""

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace import catalogue
from marketplace.models import Node, Offer
from marketplace.selectors.offer_search import OfferQuery, offer_search

from .factories import NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def market(provider_org, other_provider_org):
    """Offers across regions, models, compliance and presence."""
    eu = NodeFactory(provider=provider_org, name="eu-a100", gpu_model="A100 80GB", gpu_count=8,
                     gpu_memory_gb=80, region="EU-DE", reliability=Decimal("0.99"),
                     compliance_claimed=catalogue.compliance_mask(["gdpr", "hipaa"]),
                     compliance_verified=catalogue.compliance_mask(["gdpr", "hipaa"]))
    fr = NodeFactory(provider=provider_org, name="fr-4090", gpu_model="RTX 4090", gpu_count=4,
                     gpu_memory_gb=24, region="EU-FR", reliability=None)
    us = NodeFactory(provider=other_provider_org, name="us-h100", gpu_model="H100 80GB",
                     gpu_count=8, gpu_memory_gb=80, region="US-CA",
                     reliability=Decimal("0.95"))
    sg = NodeFactory(provider=other_provider_org, name="sg-4090", gpu_model="RTX 4090",
                     gpu_count=2, gpu_memory_gb=24, region="AP-SG", status=Node.Status.OFFLINE)
    return {
        "eu": OfferFactory(node=eu, price_per_gpu_hour=Decimal("1.85")),
        "fr": OfferFactory(node=fr, price_per_gpu_hour=Decimal("0.45")),
        "us": OfferFactory(node=us, price_per_gpu_hour=Decimal("2.60")),
        "sg": OfferFactory(node=sg, price_per_gpu_hour=Decimal("0.40")),
        "paused": OfferFactory(node=NodeFactory(provider=provider_org, name="paused-node"),
                               status=Offer.Status.PAUSED),
    }


def ids(response) -> set[int]:
    return {o.pk for o in response.context["page"].object_list}


def test_home_renders_for_anyone(client, market):
    response = client.get(reverse("home"))
    assert response.status_code == 200
    assert b"Browse GPU offers" in response.content
    assert b"tUSD / GPU-h" in response.content


def test_offers_page_lists_online_offers_by_default_with_units(client, market):
    response = client.get(reverse("offers"))
    assert response.status_code == 200
    # "Online now only" is ticked on a first visit: sg's offline machine is not listed.
    assert ids(response) == {market[k].pk for k in ("eu", "fr", "us")}
    html = response.content.decode()
    assert "1.85" in html and "tUSD / GPU-h" in html and "80 GB per GPU" in html
    assert 'id="offer-filters"' in html  # the full page, with the filter form
    assert "badge-new" in html  # fr has no reliability yet
    assert 'name="online" id="id_online" checked' in html
    # The machine's hardware and the listing's total per hour (1.85 × 8 GPUs).
    assert "64 CPU cores" in html and "512 GB RAM" in html and "4000 GB disk" in html
    assert re.search(r"14\.80 tUSD / h(</span>)? for all 8", html)


def test_unticking_online_lists_offline_machines_as_offline(client, market):
    # The form sends a hidden `false` before the box: unticked is `online=false`.
    response = client.get(reverse("offers"), {"online": "false"})
    assert ids(response) == {market[k].pk for k in ("eu", "fr", "us", "sg")}
    html = response.content.decode()
    row = html[html.index(f'data-offer-id="{market["sg"].pk}"'):]
    row = row[:row.index("</tr>")]
    assert "Offline" in row and "last heartbeat" in row
    assert "js-available\" hidden" in row  # its GPUs are not shown as free
    # Ticked again: `false` then `on`, the last one wins.
    response = client.get(reverse("offers") + "?online=false&online=on")
    assert market["sg"].pk not in ids(response)


@pytest.mark.parametrize(("params", "expected"), [
    ({"region": "EU"}, {"eu", "fr"}),
    ({"region": "US-CA"}, {"us"}),
    ({"gpu_model": "RTX 4090"}, {"fr"}),
    ({"gpu_model": "RTX 4090", "online": "false"}, {"fr", "sg"}),
    ({"gpu_model": ["RTX 4090", "H100 80GB"]}, {"fr", "us"}),
    ({"gpu_model": ["RTX 4090", "A100 80GB"], "online": "false"}, {"eu", "fr", "sg"}),
    ({"min_gpu_memory_gb": "40"}, {"eu", "us"}),
    ({"min_gpus": "5"}, {"eu", "us"}),
    ({"compliance": ["gdpr", "hipaa"]}, {"eu"}),
    ({"max_price": "1.00"}, {"fr"}),
    ({"max_price": "1.00", "online": "false"}, {"fr", "sg"}),
    ({"min_reliability": "0.99"}, {"eu"}),
    ({"online": "on"}, {"eu", "fr", "us"}),
])
def test_offer_filters(client, market, params, expected):
    response = client.get(reverse("offers"), params)
    assert response.status_code == 200
    assert ids(response) == {market[k].pk for k in expected}


def test_offer_ordering(client, market):
    response = client.get(reverse("offers"), {"ordering": "-price_per_gpu_hour"})
    prices = [o.price_per_gpu_hour for o in response.context["page"].object_list]
    assert prices == sorted(prices, reverse=True)
    response = client.get(reverse("offers"), {"ordering": "-reliability"})
    first = response.context["page"].object_list[0]
    assert first.pk == market["eu"].pk


def test_htmx_request_returns_only_the_results_partial(client, market):
    response = client.get(reverse("offers"), {"region": "EU"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'id="offer-filters"' not in html
    assert 'id="offers-table"' in html
    assert 'data-region="EU-DE"' in html and 'data-region="US-CA"' not in html
    assert "HX-Request" in response["Vary"]


def test_bad_filter_shows_an_error_not_a_500(client, market):
    response = client.get(reverse("offers"), {"region": "XX-ZZ"})
    assert response.status_code == 200
    assert "Unknown region" in response.content.decode()
    response = client.get(reverse("offers"), {"max_price": "-1"})
    assert response.status_code == 200
    assert response.context["form"].errors["max_price"]


@pytest.mark.parametrize(("params", "field"), [
    ({"min_gpus": "abc"}, "min_gpus"),
    ({"max_price": "1e"}, "max_price"),
    ({"min_gpu_memory_gb": "-5"}, "min_gpu_memory_gb"),
    ({"gpu_model": ["RTX 4090", "TPU v9"]}, "gpu_model"),
])
def test_invalid_filter_is_a_form_error_and_no_results(client, market, params, field):
    # The htmx swap (what the page does as you type): the error replaces the results, so
    # no earlier results stay on screen as if the filter had applied.
    response = client.get(reverse("offers"), params, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response.context["form"].errors[field]
    assert response.context["page"] is None
    html = response.content.decode()
    assert 'data-testid="filter-errors"' in html and 'id="offers-table"' not in html
    label = str(response.context["form"][field].label)
    assert f"{label}:" in html  # the error names the filter


def test_filter_inputs_are_checked_by_the_server_not_silently_by_the_browser(client, market):
    html = client.get(reverse("offers")).content.decode()
    form = html[html.index('<form id="offer-filters"'):]
    assert "novalidate" in form[:form.index(">")]
    assert 'name="min_gpus"' in form and 'type="number"' not in form[:form.index("</form>")]


def test_pagination(client, provider_org):
    node = NodeFactory(provider=provider_org, gpu_count=64)
    for i in range(25):
        OfferFactory(node=node, gpus_offered=1, price_per_gpu_hour=Decimal(1 + i))
    first = client.get(reverse("offers"))
    assert len(first.context["page"].object_list) == 20
    assert "page=2" in first.content.decode()
    second = client.get(reverse("offers"), {"page": 2}, HTTP_HX_REQUEST="true")
    assert len(second.context["page"].object_list) == 5


def test_offer_search_selector_is_shared_and_validates():
    from marketplace.errors import MarketError

    with pytest.raises(MarketError) as exc:
        list(offer_search(OfferQuery(region="Mars")))
    assert exc.value.field == "region"
    with pytest.raises(MarketError):
        list(offer_search(OfferQuery(ordering="DROP TABLE")))


def test_offer_detail(client, market):
    response = client.get(reverse("offer_detail", args=[market["eu"].pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "eu-a100" in html and "80 GB per GPU" in html and "verified" in html
    assert "14.80 tUSD / h for all 8" in html
    assert f'{reverse("job_new")}?offer={market["eu"].pk}' in html  # "Use this offer"


def test_use_this_offer_prefills_the_job_form(client, market, alice):
    client.force_login(alice)
    offers_html = client.get(reverse("offers")).content.decode()
    link = f'{reverse("job_new")}?offer={market["fr"].pk}'
    assert link in offers_html  # on the row
    response = client.get(link)
    assert response.status_code == 200
    form = response.context["form"]
    assert form.initial["gpu_models"] == ["RTX 4090"]
    assert form.initial["regions"] == "EU-FR"
    assert form.initial["nodes"] == 1 and form.initial["gpus_per_node"] == 4
    assert form.initial["max_price_per_gpu_hour"] == Decimal("0.45")
    html = response.content.decode()
    assert 'value="EU-FR"' in html and "Prefilled from offer" in html
    # An offer that is gone: a message, and the form's own defaults.
    response = client.get(reverse("job_new"), {"offer": market["paused"].pk})
    assert "no longer listed" in response.content.decode()
    assert "gpu_models" not in response.context["form"].initial


def test_a_never_connected_listing_is_told_apart(client, market, provider_org):
    node = NodeFactory(provider=provider_org, name="sample-3090", status=Node.Status.PENDING,
                       last_heartbeat_at=None, gpu_model="RTX 3090", gpu_memory_gb=24)
    offer = OfferFactory(node=node, node_online=False)
    html = client.get(reverse("offers"), {"online": "false"}).content.decode()
    row = html[html.index(f'data-offer-id="{offer.pk}"'):]
    row = row[:row.index("</tr>")]
    assert "never connected" in row and "last heartbeat never" in row
    eu_row = html[html.index(f'data-offer-id="{market["eu"].pk}"'):]
    assert "never connected" not in eu_row[:eu_row.index("</tr>")]


def test_paused_offer_detail_is_hidden_from_others_but_not_its_provider(
        client, market, carol, alice):
    url = reverse("offer_detail", args=[market["paused"].pk])
    assert client.get(url).status_code == 404
    client.force_login(alice)
    assert client.get(url).status_code == 404
    client.force_login(carol)
    assert client.get(url).status_code == 200
