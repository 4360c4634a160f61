"""A consumer in headless Chromium against the real ASGI server chooses its own code bundle
on the job form: the quote panel says the verifier is checking whether the task is
deterministic, then, without a reload, that it is verified by held-out evaluation only; the
job's page says the same before funding and updates in place when its own check answers
(issue 16). The verifier's answer is written here as the verify worker writes it: the
check itself runs in tests/test_determinism_quote.py and tests/test_bundle_verification_e2e.py."""

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from marketplace import runtimes
from marketplace.models import CodeBundle, DeterminismCheck, Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server
from .factories import NodeFactory, OfferFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]
RUNTIME = runtimes.latest_runtime()
D = DeterminismCheck.Status


@pytest.fixture
def market(transactional_db):
    consumer = OrganizationFactory(name="Gridwise", slug="gridwise", kind=Organization.Kind.CONSUMER,
                                   sector=Organization.Sector.ENERGY)
    UserFactory(username="erin", organization=consumer)
    for i in range(2):
        node = NodeFactory(name=f"cpu-{i}", gpu_model="cpu", gpu_memory_gb=0, gpu_count=2, runtime=RUNTIME)
        OfferFactory(node=node, price_per_gpu_hour=Decimal("0.50"), accepts_custom_code=True)
    return CodeBundle.objects.create(owner=consumer, name="pumps.py", kind="py", file="bundles/p.enc",
                                     size_bytes=10, sha256="ab" * 32, runtime=RUNTIME,
                                     entry="task:Pumps", params_schema={})


def answer(*, deterministic: bool) -> None:
    """What the verify worker stores once the check ran (services/determinism.determinism_run)."""
    DeterminismCheck.objects.filter(status=D.PENDING).update(
        status=D.DONE, deterministic=deterministic, steps=3, rel_l2=0.0 if deterministic else 3.1e-5,
        seconds=11.0)


def test_the_quote_panel_and_the_job_page_say_how_a_bundle_is_verified_before_funding(market, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # the ORM below, in Playwright's thread
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(base + "/login/")
            page.fill("#id_username", "erin")
            page.fill("#id_password", "demo-pass-123")
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")

            page.goto(base + "/jobs/new/")
            page.fill("#id_name", "Pump faults")
            page.select_option("#id_bundle", str(market.pk))
            page.select_option("#id_dataset", "none")
            page.fill("#id_params", json.dumps({"epochs": 2}))
            page.fill("#id_nodes", "2")
            page.fill("#id_gpus_per_node", "1")
            page.fill("#id_min_gpu_memory_gb", "0")
            page.check("input[name=gpu_models][value=cpu]")
            page.fill("#id_max_price_per_gpu_hour", "1.00")
            page.locator("#id_max_price_per_gpu_hour").dispatch_event("change")
            said = page.get_by_test_id("quote-verification")
            expect(said).to_have_attribute("data-method", "checking")
            expect(said).to_contain_text("Checking whether your task is deterministic")
            page.evaluate("window.__sameDocument = true")
            answer(deterministic=False)
            # The panel asks again by itself and shows the answer, before anything is paid.
            expect(said).to_have_attribute("data-method", "evaluation_only")
            expect(said).to_contain_text("Not deterministic under the runtime's seeding: verified by "
                                         "held-out evaluation only")
            assert page.evaluate("window.__sameDocument === true"), "the page reloaded"

            # Other params: another check, still running when the job is submitted.
            page.fill("#id_params", json.dumps({"epochs": 3}))
            page.locator("#id_params").dispatch_event("change")
            expect(said).to_have_attribute("data-method", "checking")
            page.click("#submit-job")
            page.wait_for_url(re.compile(r".*/jobs/\d+/$"))
            method = page.get_by_test_id("verification-method")
            expect(method).to_have_attribute("data-method", "checking")
            page.evaluate("window.__sameDocument = true")
            answer(deterministic=True)
            expect(method).to_have_attribute("data-method", "replay")
            expect(method).to_contain_text("Verified by step replay")
            assert page.evaluate("window.__sameDocument === true"), "the job page reloaded"
            assert DeterminismCheck.objects.count() == 2
        finally:
            browser.close()
