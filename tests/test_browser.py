"""A consumer in headless Chromium against the real ASGI server: log in, filter offers
(the table updates in place), fill the job form, read the live quote, submit, and see the
job's page with its timeline."""

import re
from decimal import Decimal
from pathlib import Path

import pytest

from marketplace import catalogue
from marketplace.models import Job, Node, Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, asgi_server
from .factories import NodeFactory, OfferFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]
RESULTS = ROOT / "test-results"


@pytest.fixture
def market(transactional_db):
    consumer = OrganizationFactory(name="Medisight", slug="medisight",
                                   kind=Organization.Kind.CONSUMER,
                                   sector=Organization.Sector.HEALTHCARE)
    alice = UserFactory(username="alice", organization=consumer)
    provider = OrganizationFactory(name="Nordic GPU", slug="nordic-gpu",
                                   kind=Organization.Kind.PROVIDER)
    gdpr = catalogue.compliance_mask(["gdpr", "iso27001"])
    nodes = [
        ("fra-a100-1", "A100 80GB", 80, 8, "EU-DE", "1.85", Decimal("0.992"), gdpr),
        ("par-l40s-1", "L40S", 48, 4, "EU-FR", "0.98", Decimal("0.97"), gdpr),
        ("sto-4090-1", "RTX 4090", 24, 4, "EU-SE", "0.42", None, 0),
        ("sjc-h100-1", "H100 80GB", 80, 8, "US-CA", "2.49", Decimal("0.985"), 0),
        ("iad-a100-1", "A100 40GB", 40, 4, "US-VA", "1.10", Decimal("0.95"), 0),
        ("sin-4090-1", "RTX 4090", 24, 2, "AP-SG", "0.38", None, 0),
    ]
    for name, model, mem, count, region, price, rel, tags in nodes:
        node = NodeFactory(provider=provider, name=name, gpu_model=model, gpu_memory_gb=mem,
                           gpu_count=count, region=region, reliability=rel,
                           compliance_claimed=tags, compliance_verified=tags)
        OfferFactory(node=node, price_per_gpu_hour=Decimal(price))
    offline = NodeFactory(provider=provider, name="ams-3090-1", gpu_model="RTX 3090",
                          gpu_memory_gb=24, gpu_count=2, region="EU-NL",
                          status=Node.Status.OFFLINE)
    OfferFactory(node=offline, price_per_gpu_hour=Decimal("0.30"))
    return alice


def shot(page, name: str) -> None:
    # From the top, so that the sticky header sits where a person sees it.
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(RESULTS / f"{name}.png"), full_page=True)


def test_consumer_filters_offers_and_submits_a_job(market, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls below are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    RESULTS.mkdir(exist_ok=True)
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900},
                                    timezone_id="Europe/Berlin")
            page.set_default_timeout(10_000)

            # Log in through the login page.
            page.goto(base + "/login/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", "demo-pass-123")
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")
            expect(page.locator(".org-pill")).to_contain_text("Medisight")

            # The offers browser: the 6 online offers ("Online now only" is ticked on a
            # first visit), then only EU ones, then the offline one too, without a reload.
            page.goto(base + "/offers/")
            rows = page.locator("#offers-table tbody tr")
            expect(rows).to_have_count(6)
            expect(page.locator("#id_online")).to_be_checked()
            expect(page.locator("#offers-table")).to_contain_text("new")
            page.evaluate("window.__sameDocument = true")
            page.select_option("#id_region", "EU")
            expect(rows).to_have_count(3)
            regions = rows.evaluate_all("rs => rs.map(r => r.dataset.region)")
            assert regions and all(r.startswith("EU-") for r in regions), regions
            assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
            assert "region=EU" in page.url  # the filter is in the address bar
            page.uncheck("#id_online")
            expect(rows).to_have_count(4)
            expect(page.locator("#offers-table")).to_contain_text("Offline")
            assert page.evaluate("window.__sameDocument === true")
            # A value the server refuses replaces the results with the error.
            page.fill("#id_min_gpus", "abc")
            expect(page.get_by_test_id("filter-errors")).to_contain_text("Free GPUs, at least")
            expect(rows).to_have_count(0)
            expect(page.locator("#id_min_gpus")).to_have_attribute("aria-invalid", "true")
            page.fill("#id_min_gpus", "")
            expect(rows).to_have_count(4)
            expect(page.locator("#id_min_gpus")).not_to_have_attribute("aria-invalid", "true")
            page.check("#id_online")
            expect(rows).to_have_count(3)
            shot(page, "offers")

            # The job form with its live quote.
            page.click("nav >> text=Submit a job")
            page.wait_for_url(base + "/jobs/new/")
            page.fill("#id_name", "Sepsis risk v3")
            page.fill("#id_gpus_per_node", "2")
            page.fill("#id_min_gpu_memory_gb", "40")
            page.fill("#id_regions", "EU")
            page.fill("#id_max_price_per_gpu_hour", "2.00")
            page.fill("#id_duration_hours", "3")
            page.locator("#id_regions").dispatch_event("change")
            quote = page.locator("#quote-panel")
            expect(quote).to_contain_text("would take this job now")
            # 2 GPUs × 3 h × 0.98 tUSD/GPU-h on the cheapest EU machine with ≥ 40 GB.
            expect(quote).to_contain_text("5.88")
            expect(quote).to_contain_text("L40S")
            # A constraint nothing satisfies: the panel says why.
            page.fill("#id_max_price_per_gpu_hour", "0.50")
            page.locator("#id_max_price_per_gpu_hour").dispatch_event("change")
            expect(quote).to_contain_text("No placement fits")
            page.fill("#id_max_price_per_gpu_hour", "2.00")
            page.locator("#id_max_price_per_gpu_hour").dispatch_event("change")
            expect(quote).to_contain_text("would take this job now")
            shot(page, "job-form")

            page.click("#submit-job")
            page.wait_for_url(re.compile(r".*/jobs/\d+/$"))
            expect(page.get_by_test_id("job-name")).to_have_text("Sepsis risk v3")
            # No escrow yet: the job is funded at once and waits for a machine.
            expect(page.get_by_test_id("job-status")).to_have_text(re.compile("funded|matching"))
            expect(page.get_by_test_id("timeline")).to_contain_text("Submitted by alice")
            shot(page, "job-detail")
            job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])

            # The same offers on a phone-sized screen (for a person to look at).
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(base + "/offers/?region=EU")
            expect(rows).to_have_count(3)
            shot(page, "offers-mobile")
        finally:
            browser.close()

    job = Job.objects.get(pk=job_id)
    assert job.name == "Sepsis risk v3" and job.status in (Job.Status.FUNDED, Job.Status.MATCHING)
    assert job.owner.name == "Medisight" and job.created_by.username == "alice"
    assert job.regions == ["EU"] and job.gpus_per_node == 2
    assert job.deadline > job.created_at
