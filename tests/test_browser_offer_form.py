"""The offer form in headless Chromium (issue 18): the chosen machine's free capacity shows
while the provider edits, before anything is submitted, and a submission with several
mistakes shows every error at once, each at its field; at a laptop's 1366 × 900 and a
phone's 390 × 844 with nothing wider than the window."""

from pathlib import Path

import pytest

from marketplace.models import Offer, Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server, sign_in
from .factories import NodeFactory, OfferFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]
FITS = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "mobile"])
def test_the_offer_form_shows_capacity_live_and_every_error_at_once(transactional_db, monkeypatch, viewport):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    provider = OrganizationFactory(name="Nordlys", slug="nordlys", kind=Organization.Kind.PROVIDER)
    UserFactory(username="carol", organization=provider)
    rack = NodeFactory(provider=provider, name="nordlys-a100", gpu_model="A100 80GB", gpu_count=8,
                       gpu_memory_gb=80)
    NodeFactory(provider=provider, name="nordlys-4090", gpu_model="RTX 4090", gpu_count=4, gpu_memory_gb=24)
    OfferFactory(node=rack, gpus_offered=5)
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            sign_in(page, base, "carol")
            page.goto(f"{base}/provider/offers/new/")
            panel = page.get_by_test_id("offer-capacity")
            expect(panel).to_contain_text("Choose a machine")
            page.evaluate("window.__marker = 1")  # gone if the page reloads

            page.select_option("#id_node", str(rack.pk))
            expect(panel.get_by_test_id("capacity-free")).to_have_text("3")
            expect(panel).to_contain_text("3 of 8 GPUs free to list (5 in other offers)")
            page.fill("#id_gpus_offered", "6")
            expect(panel.get_by_test_id("capacity-over")).to_have_text(
                "You ask for 6: at most 3 can be listed.")
            page.fill("#id_gpus_offered", "3")
            expect(panel.get_by_test_id("capacity-over")).to_have_count(0)
            assert page.evaluate("window.__marker") == 1  # all of it before any submission
            assert page.evaluate(FITS)

            # Several mistakes in one submission: every one is shown, each at its field.
            page.fill("#id_gpus_offered", "6")
            page.fill("#id_price_per_gpu_hour", "-1")
            page.fill("#id_min_duration_hours", "4")
            page.fill("#id_max_duration_hours", "2")
            page.get_by_role("button", name="List offer").click()
            expect(page.locator(".field.has-error")).to_have_count(3)
            for field, text in (("gpus_offered", "you can offer at most 3"),
                                ("price_per_gpu_hour", "more than 0 tUSD"),
                                ("max_duration_hours", "cannot be shorter than the minimum")):
                expect(page.locator(f".field.has-error:has(#id_{field}) .error")).to_contain_text(text)
            expect(panel.get_by_test_id("capacity-over")).to_be_visible()  # the panel says it too
            assert page.evaluate(FITS)
            assert Offer.objects.count() == 1
        finally:
            browser.close()
