"""Provider pages: nodes (create, token once, rotate) and offers (create, edit, pause)."""

from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace.models import Node, Offer
from marketplace.services.nodes import hash_token

pytestmark = pytest.mark.django_db

NODE_FORM = {"name": "rack1-a100", "gpu_model": "A100 80GB", "gpu_count": "4",
             "gpu_memory_gb": "", "cpu_cores": "32", "ram_gb": "256", "disk_gb": "2000",
             "bandwidth_mbps": "1000", "region": "EU-DE", "compliance": ["gdpr"]}


def offer_form(node, **overrides) -> dict:
    data = {"node": str(node.pk), "gpus_offered": "4", "price_per_gpu_hour": "1.75",
            "available_from": "", "available_until": "", "min_duration_hours": "0.25",
            "max_duration_hours": "", "tz_offset": "0"}
    data.update(overrides)
    return data


@pytest.mark.parametrize("name", ["provider_nodes", "provider_node_new", "provider_offers",
                                  "provider_offer_new"])
def test_provider_pages_render_for_providers(client, carol, carol_node, name):
    client.force_login(carol)
    assert client.get(reverse(name)).status_code == 200


@pytest.mark.parametrize("name", ["provider_nodes", "provider_offers"])
def test_provider_pages_need_login_and_a_provider(client, alice, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and reverse("login") in response["Location"]
    client.force_login(alice)
    assert client.get(reverse(name)).status_code == 403


def test_my_nodes_lists_only_mine(client, carol, carol_node, dave_node):
    client.force_login(carol)
    response = client.get(reverse("provider_nodes"))
    html = response.content.decode()
    assert "carol-a100" in html and "dave-4090" not in html
    assert "cmn_test" in html  # token prefix


def test_create_node_shows_the_token_once(client, carol, provider_org):
    client.force_login(carol)
    response = client.post(reverse("provider_node_new"), NODE_FORM)
    assert response.status_code == 200
    token = response.context["token"]
    node = Node.objects.get(provider=provider_org, name="rack1-a100")
    assert node.token_hash == hash_token(token)
    assert node.gpu_memory_gb == 80  # the model's standard memory
    html = response.content.decode()
    assert f"computemesh-agent --server http://testserver --token {token}" in html
    assert "shown only once" in html
    # It is not shown again anywhere.
    assert token not in client.get(reverse("provider_nodes")).content.decode()


@pytest.mark.parametrize(("overrides", "field"), [
    ({"gpu_count": "0"}, "gpu_count"),
    ({"region": "XX-ZZ"}, "region"),
    ({"gpu_model": "GTX 9999"}, "gpu_model"),
    ({"name": ""}, "name"),
    ({"ram_gb": "-5"}, "ram_gb"),
])
def test_node_form_errors_write_nothing(client, carol, overrides, field):
    client.force_login(carol)
    response = client.post(reverse("provider_node_new"), {**NODE_FORM, **overrides})
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not Node.objects.exists()


def test_duplicate_node_name_is_a_field_error(client, carol, carol_node):
    client.force_login(carol)
    response = client.post(reverse("provider_node_new"), {**NODE_FORM, "name": "carol-a100"})
    assert "already have a node" in " ".join(response.context["form"].errors["name"])


def test_rotate_token(client, carol, carol_node, dave_node):
    client.force_login(carol)
    old = carol_node.token_hash
    response = client.post(reverse("provider_node_rotate", args=[carol_node.pk]))
    assert response.status_code == 200
    carol_node.refresh_from_db()
    assert carol_node.token_hash != old
    assert carol_node.token_hash == hash_token(response.context["token"])
    # Another provider's node: 404, and nothing changes.
    before = dave_node.token_hash
    assert client.post(reverse("provider_node_rotate", args=[dave_node.pk])).status_code == 404
    dave_node.refresh_from_db()
    assert dave_node.token_hash == before
    assert client.get(reverse("provider_node_rotate", args=[carol_node.pk])).status_code == 405


def test_create_offer(client, carol, carol_node):
    client.force_login(carol)
    response = client.post(reverse("provider_offer_new"), offer_form(carol_node))
    assert response.status_code == 302
    offer = Offer.objects.get()
    assert offer.price_per_gpu_hour == Decimal("1.75") and offer.region == "EU-DE"


def test_offer_form_only_offers_my_nodes(client, carol, carol_node, dave_node):
    client.force_login(carol)
    response = client.post(reverse("provider_offer_new"), offer_form(dave_node))
    assert "node" in response.context["form"].errors
    assert not Offer.objects.exists()


@pytest.mark.parametrize(("overrides", "field", "message"), [
    ({"price_per_gpu_hour": "-1"}, "price_per_gpu_hour", "more than 0 tUSD"),
    ({"price_per_gpu_hour": "0"}, "price_per_gpu_hour", "more than 0 tUSD"),
    ({"gpus_offered": "9"}, "gpus_offered", "at most 8"),
    ({"gpus_offered": "0"}, "gpus_offered", "at least 1"),
    ({"available_until": "2001-01-01T00:00"}, "available_until", ""),
    ({"min_duration_hours": "4", "max_duration_hours": "2"}, "max_duration_hours", "shorter"),
])
def test_offer_bad_input_writes_nothing(client, carol, carol_node, overrides, field, message):
    client.force_login(carol)
    response = client.post(reverse("provider_offer_new"), offer_form(carol_node, **overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Offer.objects.exists()


def test_edit_offer(client, carol, carol_offer, dave_offer):
    client.force_login(carol)
    url = reverse("provider_offer_edit", args=[carol_offer.pk])
    assert client.get(url).status_code == 200
    data = offer_form(carol_offer.node, price_per_gpu_hour="2.10", gpus_offered="6")
    del data["node"]
    assert client.post(url, data).status_code == 302
    carol_offer.refresh_from_db()
    assert carol_offer.price_per_gpu_hour == Decimal("2.10") and carol_offer.gpus_offered == 6
    # Bad input on edit: an error, no change.
    response = client.post(url, {**data, "price_per_gpu_hour": "-3"})
    assert "price_per_gpu_hour" in response.context["form"].errors
    carol_offer.refresh_from_db()
    assert carol_offer.price_per_gpu_hour == Decimal("2.10")
    # Another provider's offer: 404.
    other = reverse("provider_offer_edit", args=[dave_offer.pk])
    assert client.get(other).status_code == 404
    assert client.post(other, data).status_code == 404


def test_pause_and_resume(client, carol, carol_offer, dave_offer):
    client.force_login(carol)
    url = reverse("provider_offer_status", args=[carol_offer.pk])
    client.post(url, {"status": "paused"})
    carol_offer.refresh_from_db()
    assert carol_offer.status == Offer.Status.PAUSED
    client.post(url, {"status": "active"})
    carol_offer.refresh_from_db()
    assert carol_offer.status == Offer.Status.ACTIVE
    response = client.post(reverse("provider_offer_status", args=[dave_offer.pk]),
                           {"status": "paused"})
    assert response.status_code == 404
    dave_offer.refresh_from_db()
    assert dave_offer.status == Offer.Status.ACTIVE


def test_my_nodes_shows_running_work_and_earnings(client, carol, carol_node, healthcare):
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from marketplace.models import Assignment

    from .factories import JobFactory, OfferFactory

    offer = OfferFactory(node=carol_node)
    now = timezone.now()
    for status, hours in (("running", 2), ("succeeded", 1), ("lost", 5)):
        Assignment.objects.create(job=JobFactory(owner=healthcare), node=carol_node, offer=offer, attempt=1,
                                  node_rank=0, gpus=2, price_per_gpu_hour=Decimal("1.5"), status=status,
                                  started_at=now - timedelta(hours=hours),
                                  finished_at=None if status == "running" else now)
    client.force_login(carol)
    html = client.get("/provider/nodes/").content.decode()
    # 2 GPUs × 1.5 tUSD × (2 h running + 1 h finished); lost work is not earned.
    import re

    assert 'data-testid="running-assignments">1<' in html
    earned = Decimal(re.search(r'data-testid="earned">([0-9.]+)<', html).group(1))
    assert Decimal("9") <= earned < Decimal("9.01")


def test_the_offer_form_shows_every_error_at_once(client, carol, carol_node):
    """Issue 18: cross-field errors (capacity, window, durations) together with the fields'
    own, after one submission, each next to its field; nothing is written."""
    client.force_login(carol)
    response = client.post(reverse("provider_offer_new"), offer_form(
        carol_node, gpus_offered="9", price_per_gpu_hour="abc", available_until="2001-01-01T00:00",
        min_duration_hours="4", max_duration_hours="2"))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"gpus_offered", "price_per_gpu_hour", "available_until",
                           "max_duration_hours"}, errors
    assert "at most 8" in " ".join(errors["gpus_offered"])
    assert "shorter" in " ".join(errors["max_duration_hours"])
    assert len(errors["price_per_gpu_hour"]) == 1  # its own parse error, not a second one
    assert response.content.decode().count('role="alert"') >= 5  # the summary and the four fields
    assert not Offer.objects.exists()


def test_an_offer_edit_shows_every_error_at_once(client, carol, carol_offer):
    Offer.objects.filter(pk=carol_offer.pk).update(gpus_reserved=3)
    client.force_login(carol)
    data = offer_form(carol_offer.node, gpus_offered="2", min_duration_hours="0")
    del data["node"]
    response = client.post(reverse("provider_offer_edit", args=[carol_offer.pk]), data)
    errors = response.context["form"].errors
    assert "reserved by running jobs" in " ".join(errors["gpus_offered"])
    assert "more than 0 hours" in " ".join(errors["min_duration_hours"])


def test_the_offer_capacity_panel_follows_the_machine_and_the_count(client, carol, carol_node, carol_offer,
                                                                     dave_node):
    """The panel the offer form reads while the provider types: the machine's free GPUs (its
    other offers' excluded), the count asked for checked against them; another provider's
    machine or offer is not shown."""
    Offer.objects.filter(pk=carol_offer.pk).update(gpus_offered=5, gpus_reserved=2)
    client.force_login(carol)
    url = reverse("provider_offer_capacity")
    page = client.get(url, {"node": carol_node.pk, "gpus_offered": "3"}).content.decode()
    assert 'data-testid="capacity-free">3</span> of 8 GPUs free' in page and "capacity-over" not in page
    over = client.get(url, {"node": carol_node.pk, "gpus_offered": "6"}).content.decode()
    assert "You ask for 6: at most 3 can be listed." in over
    # Editing the offer itself: its own GPUs count as free; running jobs hold 2 of them.
    own = client.get(url, {"offer": carol_offer.pk, "gpus_offered": "1"}).content.decode()
    assert 'data-testid="capacity-free">8</span>' in own and "running jobs hold 2" in own
    assert "Choose a machine" in client.get(url, {"node": dave_node.pk}).content.decode()
    assert client.get(url, {"offer": "999999"}).status_code == 404
    assert "Choose a machine" in client.get(url, {"node": "x' or 1=1"}).content.decode()
    # The form carries the panel, rendered with the page.
    form = client.get(reverse("provider_offer_edit", args=[carol_offer.pk])).content.decode()
    assert 'data-testid="offer-capacity"' in form and 'data-testid="capacity-free">8</span>' in form
