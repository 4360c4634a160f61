"""The pages for code bundles (issue 16): a provider opts an offer in to consumers' code,
the offers page shows and filters on it; the Code bundles page lists, uploads (its form and
script use the resumable upload API) and deletes; the job form offers bundles."""

from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace.models import CodeBundle, Job, Offer

from .factories import JobFactory, NodeFactory, OfferFactory
from .test_api_bundles import RUNTIME
from .test_pages_provider import offer_form

pytestmark = pytest.mark.django_db


def test_a_provider_opts_an_offer_in_and_out(client, carol, carol_node):
    client.force_login(carol)
    response = client.post(reverse("provider_offer_new"),
                           offer_form(carol_node, accepts_custom_code="on"))
    assert response.status_code == 302
    offer = Offer.objects.get()
    assert offer.accepts_custom_code is True
    page = client.get(reverse("provider_offers")).content.decode()
    assert "runs consumers' code" in page
    edit = client.get(reverse("provider_offer_edit", args=[offer.pk]))
    assert edit.context["form"]["accepts_custom_code"].value() is True
    data = offer_form(carol_node)
    del data["node"]
    assert client.post(reverse("provider_offer_edit", args=[offer.pk]), data).status_code == 302
    offer.refresh_from_db()
    assert offer.accepts_custom_code is False


def test_the_offers_page_shows_and_filters_on_custom_code(client):
    yes = OfferFactory(node=NodeFactory(runtime=RUNTIME), accepts_custom_code=True,
                       price_per_gpu_hour=Decimal("2"))
    no = OfferFactory(node=NodeFactory(), price_per_gpu_hour=Decimal("1"))
    everything = client.get(reverse("offers"))
    assert {o.pk for o in everything.context["page"].object_list} == {yes.pk, no.pk}
    assert f"runs your own code · {RUNTIME}" in everything.content.decode()
    only = client.get(reverse("offers"), {"accepts_custom_code": "on"})
    assert {o.pk for o in only.context["page"].object_list} == {yes.pk}


def test_the_api_filter_too(client):
    yes = OfferFactory(accepts_custom_code=True)
    OfferFactory()
    body = client.get("/api/v1/offers/", {"accepts_custom_code": "true"}).json()
    assert [o["id"] for o in body["results"]] == [yes.pk]
    assert body["results"][0]["accepts_custom_code"] is True


def _bundle(org) -> CodeBundle:
    return CodeBundle.objects.create(owner=org, name="task.py", kind="py", file="bundles/t.enc",
                                     size_bytes=10, sha256="c" * 64, runtime=RUNTIME,
                                     entry="task:T", params_schema={})


def test_the_bundles_page_lists_and_deletes_with_409_in_use(client, alice, healthcare):
    bundle = _bundle(healthcare)
    client.force_login(alice)
    page = client.get(reverse("bundles")).content.decode()
    assert "task.py" in page and "data-resumable-upload" in page and RUNTIME in page
    job = JobFactory(owner=healthcare, template="", bundle=bundle, status=Job.Status.RUNNING)
    response = client.post(reverse("bundle_delete", args=[bundle.pk]), follow=True)
    assert f"#{job.pk}" in response.content.decode() and CodeBundle.objects.filter(pk=bundle.pk).exists()
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SETTLED)
    assert client.post(reverse("bundle_delete", args=[bundle.pk])).status_code == 302
    assert not CodeBundle.objects.filter(pk=bundle.pk).exists()


def test_another_tenant_cannot_see_or_delete_a_bundle(client, bob, carol, healthcare):
    bundle = _bundle(healthcare)
    client.force_login(bob)
    assert "task.py" not in client.get(reverse("bundles")).content.decode()
    assert client.post(reverse("bundle_delete", args=[bundle.pk])).status_code == 404
    client.force_login(carol)  # a provider
    assert client.get(reverse("bundles")).status_code == 403
    assert CodeBundle.objects.filter(pk=bundle.pk).exists()


def test_the_job_form_takes_a_bundle_in_place_of_a_template(client, alice, healthcare):
    from .test_pages_jobs import form_data

    bundle = _bundle(healthcare)
    bundle.params_schema = {"type": "object", "properties": {"lr": {"type": "number", "default": 0.1}}}
    bundle.save()
    client.force_login(alice)
    page = client.get(reverse("job_new")).content.decode()
    assert f'value="{bundle.pk}"' in page and "No dataset (a code bundle" in page
    bad = client.post(reverse("job_new"), form_data(bundle=str(bundle.pk), dataset="none",
                                                    params='{"lr": "fast"}'))
    assert bad.status_code == 200 and "Invalid params for bundle" in bad.content.decode()
    response = client.post(reverse("job_new"), form_data(bundle=str(bundle.pk), dataset="none",
                                                         params="{}"))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert job.bundle_id == bundle.pk and job.template == "" and job.params == {"lr": 0.1}
    detail = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert "code bundle task.py" in detail and "task:T" in detail


def test_a_provider_opts_in_through_the_api_and_a_patch_keeps_it(api, carol, carol_node):
    client = api.as_user(carol)
    created = client.post("/api/v1/offers/", {"node": carol_node.pk, "gpus_offered": 2,
                                              "price_per_gpu_hour": "1.5",
                                              "accepts_custom_code": True}, format="json")
    assert created.status_code == 201 and created.json()["accepts_custom_code"] is True
    oid = created.json()["id"]
    patched = client.patch(f"/api/v1/offers/{oid}/", {"price_per_gpu_hour": "1.7"}, format="json")
    assert patched.status_code == 200 and patched.json()["accepts_custom_code"] is True
    off = client.patch(f"/api/v1/offers/{oid}/", {"accepts_custom_code": False}, format="json")
    assert off.json()["accepts_custom_code"] is False
