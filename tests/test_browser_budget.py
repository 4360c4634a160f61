"""The budget warning in headless Chromium against daphne and the Redis channel layer: when
a running job crosses 80 % of its budget, its page and "My jobs" show the warning without
a reload."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from marketplace.models import Assignment, Job, Organization
from marketplace.services import budget

from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server, open_live_job, sign_in
from .factories import JobFactory, NodeFactory, OfferFactory, OrganizationFactory, UserFactory
from .test_browser_live import elsewhere

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]


def test_the_warning_appears_live_at_80_percent(transactional_db, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    consumer = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    UserFactory(username="alice", organization=consumer)
    job = JobFactory(owner=consumer, name="Sepsis risk", status=Job.Status.RUNNING, budget=Decimal("10"))
    node = NodeFactory(name="fra-cpu", gpu_model="cpu", gpu_memory_gb=0, gpu_count=2)
    a = Assignment.objects.create(
        job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("10"), status=Assignment.Status.RUNNING,
        started_at=timezone.now() - timedelta(minutes=40))  # 6.67 of 10 tUSD

    def cross_80_percent():
        Assignment.objects.filter(pk=a.pk).update(started_at=timezone.now() - timedelta(minutes=50))
        return budget.budget_watch()

    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            sign_in(page, base, "alice")
            open_live_job(page, base, job.pk)
            warning = page.get_by_test_id("budget-warning")
            expect(warning).to_be_hidden()
            page.evaluate("window.__marker = 1")  # gone if the page reloads
            assert elsewhere(cross_80_percent)["warned"] == 1
            expect(warning).to_be_visible(timeout=10_000)
            expect(warning).to_contain_text("% spent")
            assert page.evaluate("window.__marker") == 1

            page.goto(f"{base}/jobs/")
            chip = page.locator(f'tr[data-job-id="{job.pk}"] .js-budget-warning')
            expect(chip).to_be_visible()
            page.evaluate("window.__marker = 2")
            # live_dash.js marks the body once the server accepted the socket (after joining
            # it to the group that the budget change is sent to).
            page.wait_for_selector('body[data-live-dashboard="open"]', state="attached", timeout=10_000)
            # A raised budget takes it back under 80 %: the mark goes, live.
            elsewhere(lambda: budget.job_budget_raise(job=job, budget=Decimal("100")))
            expect(chip).to_be_hidden(timeout=10_000)
            assert page.evaluate("window.__marker") == 2
        finally:
            browser.close()
