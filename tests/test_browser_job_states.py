"""A cancelled job reads "Cancelled" with its refund (issue 18), in headless Chromium against
daphne and the Redis channel layer: a running job's page, left open, follows the cancel and
the settlement without a reload (the badge keeps saying "Cancelled" once the job is settled,
the throughput goes, the refund appears), and says the same after a reload."""

import secrets
from decimal import Decimal
from pathlib import Path

import pytest

from marketplace import job_states
from marketplace.models import Escrow, Job, Organization, Settlement

from .browser_support import CHROMIUM, CHROMIUM_ARGS, daphne_process, open_live_job, sign_in
from .factories import JobFactory, OrganizationFactory, UserFactory
from .test_browser_live import elsewhere

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]
S = Job.Status


def test_a_cancelled_job_reads_cancelled_with_its_refund(transactional_db, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    consumer = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    UserFactory(username="alice", organization=consumer)
    job = JobFactory(owner=consumer, name="Sepsis risk", status=S.RUNNING, budget=Decimal("2"),
                     current_step=2600, total_steps=10000, samples_per_sec=5000.0)
    escrow = Escrow.objects.create(job=job, key="0x" + secrets.token_hex(32), status=Escrow.Status.FUNDED,
                                   amount=Decimal("2"))

    def cancel_and_settle():
        job_states.transition(job_id=job.pk, to=S.CANCELLED, reason="cancelled_by_owner",
                              message="Cancelled by alice.")
        Settlement.objects.create(job=job, status=Settlement.Status.SETTLED, charged=Decimal("0.000625"),
                                  fee=Decimal("0.000031"), refunded=Decimal("1.999375"))
        Escrow.objects.filter(pk=escrow.pk).update(status=Escrow.Status.SETTLED)
        job_states.transition(job_id=job.pk, to=S.SETTLED, reason="escrow_settled",
                              message="Settled on chain: 0.000594 tUSD to providers, 0.000031 tUSD "
                                      "platform fee, 1.999375 tUSD back to the consumer.")

    with daphne_process(logs="browser", ESCROW_ENABLED="1") as (base, _pid), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            sign_in(page, base, "alice")
            open_live_job(page, base, job.pk)
            badge = page.get_by_test_id("job-status")
            expect(badge).to_have_text("running")
            expect(page.get_by_test_id("throughput")).to_be_visible()
            page.evaluate("window.__marker = 1")  # gone if the page reloads
            elsewhere(cancel_and_settle)
            summary = page.get_by_test_id("job-summary")
            expect(summary).to_have_text(
                "Cancelled; 0.000625 tUSD paid for the work done, 1.999375 tUSD refunded.", timeout=10_000)
            expect(badge).to_have_text("cancelled")
            assert badge.inner_text() == "Cancelled"  # as the reader sees it (CSS capitalises)
            expect(page.get_by_test_id("throughput")).to_be_hidden()
            escrow_card = page.get_by_test_id("escrow-summary")
            expect(escrow_card).to_contain_text("1.999375 tUSD back to the consumer")
            assert page.evaluate("window.__marker") == 1

            page.reload()
            assert badge.inner_text() == "Cancelled"
            expect(summary).to_contain_text("1.999375 tUSD refunded")
            page.goto(f"{base}/jobs/?status=cancelled")
            row = page.locator(f'tr[data-job-id="{job.pk}"]')
            expect(row.locator(".js-status .chip")).to_have_text("cancelled")
            expect(row).to_contain_text("0.000625 paid · 1.999375 refunded")
        finally:
            browser.close()
