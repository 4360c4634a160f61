"""Live pages in headless Chromium against daphne and the Redis channel layer: a job's
status changes on "My jobs" and an offer's free GPUs change on the offers page, without a
reload."""

from pathlib import Path

import pytest

from marketplace import job_states
from marketplace.models import Job, Offer, Organization
from marketplace.services.offers import offer_set_status

from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server, open_live_job, sign_in
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
            sign_in(page, base, "erin")
            page.goto(f"{base}/jobs/")
            row = page.locator(f'tr[data-job-id="{job.pk}"] .js-status')
            expect(row).to_have_text("matching")
            page.evaluate("window.__marker = 1")  # gone if the page reloads
            # live_dash.js marks the body once the server accepted the socket, which it
            # does after joining the socket to the group that the change below is sent to.
            page.wait_for_selector('body[data-live-dashboard="open"]', state="attached", timeout=10_000)
            elsewhere(lambda: job_states.transition(job_id=job.pk, to=Job.Status.CANCELLED,
                                                    reason="test", message="Cancelled from the test."))
            expect(row).to_have_text("cancelled", timeout=10_000)
            assert page.evaluate("window.__marker") == 1

            page.goto(f"{base}/offers/")
            free = page.locator(f'tr[data-offer-id="{offer.pk}"] .js-free')
            expect(free).to_have_text("4")
            page.wait_for_selector('body[data-live-market="open"]', state="attached", timeout=10_000)
            Offer.objects.filter(pk=offer.pk).update(gpus_reserved=3)
            elsewhere(lambda: offer_set_status(provider=offer.provider, offer=offer, status="active"))
            expect(free).to_have_text("1", timeout=10_000)
        finally:
            browser.close()


def test_the_job_page_draws_progress_as_it_is_persisted(transactional_db, monkeypatch):
    from decimal import Decimal

    from django.utils import timezone
    from playwright.sync_api import expect, sync_playwright

    from marketplace.models import Assignment
    from marketplace.services.agent_ingest import agent_data

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    consumer = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    UserFactory(username="alice", organization=consumer)
    job = JobFactory(owner=consumer, name="Sepsis risk", status=Job.Status.RUNNING)
    node = NodeFactory(name="fra-cpu", gpu_model="cpu", gpu_memory_gb=0, gpu_count=2)
    assignment = Assignment.objects.create(
        job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0, gpus=2,
        price_per_gpu_hour=Decimal("0.5"), status=Assignment.Status.RUNNING, started_at=timezone.now())

    def report(seq, steps, lines=()):
        agent_data(node=node, message={"type": "progress", "id": f"p{seq}", "assignment": assignment.pk,
                                        "seq": seq, "items": [{"step": s, "total_steps": 10, "loss": 2.0 / s,
                                                               "samples_per_sec": 900.0} for s in steps]})

    report(1, [1, 2, 3])
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            sign_in(page, base, "alice")
            open_live_job(page, base, job.pk)
            page.wait_for_function("window.jobLive.state.points.length === 3")
            elsewhere(lambda: report(2, [4, 5]))
            page.wait_for_function("window.jobLive.state.points.length === 5", timeout=10_000)
            expect(page.locator('[data-live="progress-text"]')).to_contain_text("5")
            elsewhere(lambda: agent_data(node=node, message={
                "type": "log", "id": "l1", "assignment": assignment.pk, "seq": 3,
                "lines": ["epoch 1: held-out accuracy 0.91"]}))
            expect(page.get_by_test_id("log-tail")).to_contain_text("held-out accuracy 0.91", timeout=10_000)
            seqs = page.evaluate("window.jobLive.state.points.map(p => p.seq)")
            assert seqs == [1, 2, 3, 4, 5]
        finally:
            browser.close()


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "mobile"])
def test_progress_and_log_in_one_live_view_with_follow(transactional_db, monkeypatch, viewport):
    """Issue 18: the job page shows progress and the ranks' log in one live view; with
    "Follow" on the log scrolls to each new line, off it stays where the reader is; search
    and download remain."""
    from decimal import Decimal

    from django.utils import timezone
    from playwright.sync_api import expect, sync_playwright

    from marketplace.models import Assignment
    from marketplace.services.agent_ingest import agent_data

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    consumer = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    UserFactory(username="alice", organization=consumer)
    job = JobFactory(owner=consumer, name="Sepsis risk", status=Job.Status.RUNNING)
    node = NodeFactory(name="fra-cpu", gpu_model="cpu", gpu_memory_gb=0, gpu_count=2)
    assignment = Assignment.objects.create(
        job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0, gpus=2,
        price_per_gpu_hour=Decimal("0.5"), status=Assignment.Status.RUNNING, started_at=timezone.now())

    def log(seq, first, last):
        lines = [f"epoch {i}: loss {1 / i:.4f}" for i in range(first, last + 1)]
        agent_data(node=node, message={"type": "log", "id": f"l{seq}", "assignment": assignment.pk,
                                        "seq": seq, "lines": lines})

    agent_data(node=node, message={"type": "progress", "id": "p1", "assignment": assignment.pk, "seq": 1,
                                    "items": [{"step": 3, "total_steps": 10, "loss": 0.5,
                                               "samples_per_sec": 900.0}]})
    log(2, 1, 120)
    bottom = "pre => pre.scrollHeight - pre.scrollTop - pre.clientHeight < 4"
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            sign_in(page, base, "alice")
            open_live_job(page, base, job.pk)
            view = page.get_by_test_id("live-view")
            expect(view.get_by_test_id("job-progress")).to_contain_text("Step 3 of 10")
            tail = view.get_by_test_id("log-tail")
            expect(tail).to_contain_text("epoch 120: loss", timeout=10_000)
            expect(view.get_by_test_id("log-follow")).to_be_checked()
            assert tail.evaluate(bottom), "following: the newest line is in view"
            elsewhere(lambda: log(3, 121, 130))
            expect(tail).to_contain_text("epoch 130: loss", timeout=10_000)
            page.wait_for_function(f"({bottom})(document.querySelector('[data-testid=log-tail]'))")

            # Follow off: new lines arrive, the reader's position stays.
            view.get_by_test_id("log-follow").uncheck()
            tail.evaluate("pre => { pre.scrollTop = 40; }")
            elsewhere(lambda: log(4, 131, 140))
            expect(tail).to_contain_text("epoch 140: loss", timeout=10_000)
            assert tail.evaluate("pre => pre.scrollTop") == 40
            # On again: to the newest line at once.
            view.get_by_test_id("log-follow").check()
            assert tail.evaluate(bottom)

            view.get_by_test_id("log-filter").fill("epoch 13")
            lines = tail.inner_text().splitlines()
            assert lines and all("epoch 13" in x for x in lines), lines
            assert view.get_by_test_id("log-download").get_attribute("href").endswith("?download=1")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        finally:
            browser.close()
