"""The pages that hold tables fit the screen (issue 18, item 6): in headless Chromium at a
phone's 390 × 844 and a laptop's 1366 × 900, the offers page, a job page and *My nodes* are
no wider than the window; "Rotate token" is in view on a laptop; the phone's menu opens and
closes from the keyboard."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from marketplace import catalogue
from marketplace.models import Assignment, Job, Node, Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, asgi_server
from .factories import JobFactory, NodeFactory, OfferFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 900}
FITS = "document.documentElement.scrollWidth <= window.innerWidth"
# On failure: the elements that reach past the window's right edge, to say which one.
WIDEST = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""


@pytest.fixture
def world(transactional_db):
    consumer = OrganizationFactory(name="Medisight Diagnostics", slug="medisight",
                                   kind=Organization.Kind.CONSUMER)
    UserFactory(username="alice", organization=consumer)
    provider = OrganizationFactory(name="Nordlys Green Compute", slug="nordlys",
                                   kind=Organization.Kind.PROVIDER)
    UserFactory(username="carol", organization=provider)
    tags = catalogue.compliance_mask(["gdpr", "iso27001", "hipaa"])
    nodes = []
    for i, (model, mem, status) in enumerate([
            ("H100 80GB", 80, Node.Status.ONLINE), ("A100 80GB", 80, Node.Status.ONLINE),
            ("RTX 4090", 24, Node.Status.OFFLINE), ("L40S", 48, Node.Status.PENDING)]):
        node = NodeFactory(provider=provider, name=f"nordlys-rack{i}-{model.split()[0].lower()}-long-name",
                           gpu_model=model, gpu_memory_gb=mem, gpu_count=8, region="EU-SE",
                           status=status, bandwidth_mbps=25_000, benchmark_tflops=Decimal("51.234"),
                           agent_version="0.9.3", compliance_claimed=tags, compliance_verified=tags,
                           reliability=Decimal("0.985"),
                           # What the first machine's agent reported; the others never said.
                           hardware={"cuda": "12.4", "driver": "550.54.15"} if i == 0 else {},
                           last_heartbeat_at=None if status == Node.Status.PENDING else timezone.now())
        OfferFactory(node=node, price_per_gpu_hour=Decimal("2.345678"))
        nodes.append(node)
    job = JobFactory(owner=consumer, name="Sepsis risk v3 with a long descriptive name",
                     status=Job.Status.RUNNING, nodes=2, gpus_per_node=8,
                     params={"learning_rate": 0.001, "hidden_layers": [512, 256, 128, 64, 32, 16],
                             "class_weights": "balanced-with-a-long-unbroken-value-" * 3})
    for rank, node in enumerate(nodes[:2]):
        Assignment.objects.create(job=job, node=node, offer=node.offers.first(), attempt=1,
                                  node_rank=rank, gpus=8, price_per_gpu_hour=Decimal("2.345678"),
                                  status=Assignment.Status.RUNNING,
                                  started_at=timezone.now() - timedelta(minutes=5))
    return job


def login(browser, base, username):
    page = browser.new_page(viewport=LAPTOP)
    page.set_default_timeout(10_000)
    page.goto(base + "/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "demo-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    return page


def assert_fits(page, url, size, shot: str = ""):
    page.set_viewport_size(size)
    page.goto(url)
    page.wait_for_load_state("load")
    if shot:  # for a person to look at
        (ROOT / "test-results").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "test-results" / f"{shot}-{size['width']}.png"), full_page=True)
    assert page.evaluate(FITS), (url, size, page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]"), page.evaluate(WIDEST))


def test_tables_fit_a_phone_and_a_laptop(world, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    job = world
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice = login(browser, base, "alice")
            for size in (PHONE, LAPTOP):
                assert_fits(alice, base + "/offers/?online=false", size, "fit-offers")
                assert_fits(alice, f"{base}/jobs/{job.pk}/", size, "fit-job")
            # On a laptop the job's machines table fits its card.
            assert_fits(alice, f"{base}/jobs/{job.pk}/", LAPTOP)
            assert alice.locator(".table-wrap:has(td[data-testid=node-step])").evaluate(
                "w => w.scrollWidth <= w.clientWidth + 1"), "the machines table scrolls sideways"
            # On a laptop the offers table fits its box: nothing to scroll sideways to.
            assert_fits(alice, base + "/offers/?online=false", LAPTOP)
            assert alice.locator(".table-wrap:has(#offers-table)").evaluate(
                "w => w.scrollWidth <= w.clientWidth + 1"), "the offers table scrolls sideways"
            # On the phone the offers are cards with their price and action in view.
            assert_fits(alice, base + "/offers/?online=false", PHONE)
            first = alice.locator("#offers-table tbody tr").first
            expect(first.locator(".price")).to_be_in_viewport()
            expect(alice.get_by_test_id("use-offer").first).to_be_visible()
            # The machine's CUDA and driver versions in the list, on a card and in the table.
            for size in (PHONE, LAPTOP):
                assert_fits(alice, base + "/offers/?online=false", size)
                software = alice.get_by_test_id("offer-software").filter(
                    has_text="CUDA 12.4 · driver 550.54.15")
                expect(software).to_be_visible()
                box = software.bounding_box()
                assert box and box["x"] + box["width"] <= size["width"], (size, box)
                expect(alice.get_by_test_id("offer-software").filter(
                    has_text="CUDA and driver not reported yet").first).to_be_visible()
            assert_fits(alice, base + "/offers/?online=false", PHONE)  # the phone again, for the menu

            # The phone's menu, from the keyboard: Tab reaches the button, Enter opens it,
            # Escape closes it and leaves the focus on the button.
            toggle = alice.locator("[data-nav-toggle]")
            for _ in range(6):
                alice.keyboard.press("Tab")
                if alice.evaluate("document.activeElement.hasAttribute('data-nav-toggle')"):
                    break
            else:
                pytest.fail("Tab never reached the menu button")
            nav_link = alice.locator("#main-nav >> text=My jobs")
            expect(nav_link).to_be_hidden()
            alice.keyboard.press("Enter")
            expect(toggle).to_have_attribute("aria-expanded", "true")
            expect(nav_link).to_be_visible()
            alice.keyboard.press("Tab")
            assert alice.evaluate("document.activeElement.closest('#main-nav') !== null")
            alice.keyboard.press("Escape")
            expect(toggle).to_have_attribute("aria-expanded", "false")
            expect(nav_link).to_be_hidden()
            assert alice.evaluate("document.activeElement.hasAttribute('data-nav-toggle')")

            carol = login(browser, base, "carol")
            for size in (PHONE, LAPTOP):
                assert_fits(carol, base + "/provider/nodes/", size, "fit-nodes")
                # "Rotate token" is in the window, not scrolled out of its table's box.
                rotate = carol.get_by_test_id("rotate-token").first
                rotate.scroll_into_view_if_needed()
                box = rotate.bounding_box()
                wrap = carol.locator(".nodes-table").first.evaluate(
                    "t => t.parentElement.getBoundingClientRect().right")
                assert box and box["x"] + box["width"] <= min(size["width"], wrap) + 1, (size, box, wrap)
                assert carol.locator(".table-wrap:has(.nodes-table)").evaluate(
                    "w => w.scrollWidth <= w.clientWidth + 1"), "the nodes table scrolls sideways"
        finally:
            browser.close()
