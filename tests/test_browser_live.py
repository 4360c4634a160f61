"""Live pages in headless Chromium against daphne and the Redis channel layer: a job's
status changes on "My jobs" and an offer's free GPUs change on the offers page, without a
reload."""

from pathlib import Path

import pytest

from marketplace import job_states
from marketplace.models import Job, Offer, Organization
from marketplace.services.offers import offer_set_status

from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server
from .factories import JobFactory, NodeFactory, OfferFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]


def elsewhere(fn):
    """Run platform code in its own thread, as a worker would: Playwright's event loop owns
    this one, and the channel layer's sync wrapper refuses to run inside it."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def run():
        try:
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=30)


@pytest.fixture
def world(transactional_db):
    consumer = OrganizationFactory(name="GridCast", slug="gridcast", kind=Organization.Kind.CONSUMER)
    erin = UserFactory(username="erin", organization=consumer)
    job = JobFactory(owner=consumer, name="Load forecast", status=Job.Status.MATCHING)
    provider = OrganizationFactory(name="Render Farm", slug="render-farm", kind=Organization.Kind.PROVIDER)
    offer = OfferFactory(node=NodeFactory(provider=provider, name="sgp-4090", gpu_model="RTX 4090",
                                          gpu_memory_gb=24, gpu_count=4, region="AP-SG"))
    return erin, job, offer


def test_my_jobs_and_the_offers_page_update_without_a_reload(world, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls below are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    erin, job, offer = world
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/login/")
            page.fill("input[name=username]", "erin")
            page.fill("input[name=password]", "demo-pass-123")
            page.click("button[type=submit]")
            page.goto(f"{base}/jobs/")
            row = page.locator(f'tr[data-job-id="{job.pk}"] .js-status')
            expect(row).to_have_text("matching")
            page.evaluate("window.__marker = 1")  # gone if the page reloads
            page.wait_for_timeout(1000)  # the socket is open
            elsewhere(lambda: job_states.transition(job_id=job.pk, to=Job.Status.CANCELLED,
                                                    reason="test", message="Cancelled from the test."))
            expect(row).to_have_text("cancelled", timeout=10_000)
            assert page.evaluate("window.__marker") == 1

            page.goto(f"{base}/offers/")
            free = page.locator(f'tr[data-offer-id="{offer.pk}"] .js-free')
            expect(free).to_have_text("4")
            page.wait_for_timeout(1000)
            Offer.objects.filter(pk=offer.pk).update(gpus_reserved=3)
            elsewhere(lambda: offer_set_status(provider=offer.provider, offer=offer, status="active"))
            expect(free).to_have_text("1", timeout=10_000)
        finally:
            browser.close()
