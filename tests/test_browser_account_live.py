"""The Account page and the header balance follow the organization's money without a reload
(issue 18), in headless Chromium against daphne and the Redis channel layer: a deposit
into a job's escrow and its settlement (the indexer's services, run in a worker thread)
reach an open Account page (balances, history, statements) and the header's balance; a
page of another organization hears nothing."""

from decimal import Decimal
from pathlib import Path

import pytest

from marketplace.models import Job, Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server, sign_in
from .factories import JobFactory, OrganizationFactory, UserFactory
from .money_support import escrow_funded, escrow_settled
from .test_browser_live import elsewhere

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "mobile"])
def test_funding_and_settlement_reach_an_open_account_page(transactional_db, monkeypatch, viewport):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    mine = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    UserFactory(username="alice", organization=mine)
    other = OrganizationFactory(name="GridCast", slug="gridcast", kind=Organization.Kind.CONSUMER)
    UserFactory(username="bob", organization=other)
    job = JobFactory(owner=mine, name="Sepsis risk", status=Job.Status.SUBMITTED, budget=Decimal("25"))

    def settle():
        Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)  # the run is not the point
        escrow_settled(job, charged=Decimal("2.000625"), fee=Decimal("0.1"))

    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            sign_in(page, base, "alice")
            page.goto(f"{base}/account/")
            expect(page.get_by_test_id("no-movements")).to_be_visible()
            expect(page.get_by_test_id("balance-escrowed")).to_have_text("0.00")
            theirs = browser.new_page(viewport=viewport)
            sign_in(theirs, base, "bob")
            theirs.goto(f"{base}/account/")
            for p in (page, theirs):
                p.evaluate("window.__marker = 1")  # gone if the page reloads
                p.wait_for_selector('body[data-live-dashboard="open"]', state="attached", timeout=10_000)

            elsewhere(lambda: escrow_funded(job, Decimal("25")))
            expect(page.get_by_test_id("balance-escrowed")).to_have_text("25.00", timeout=10_000)
            expect(page.locator("[data-testid=movement][data-kind=deposit]")).to_have_count(1)
            expect(page.get_by_test_id("movement-amount").first).to_have_text("25.00")
            expect(page.get_by_test_id("no-movements")).to_have_count(0)
            # The header's balance (in the folded menu on a phone) follows too.
            expect(page.get_by_test_id("header-balance")).to_contain_text("25.00 in escrow")

            elsewhere(settle)
            expect(page.get_by_test_id("balance-spent")).to_have_text("2.000625", timeout=10_000)
            expect(page.get_by_test_id("balance-refunded")).to_have_text("22.999375")
            expect(page.get_by_test_id("balance-escrowed")).to_have_text("0.00")
            kinds = page.locator("[data-testid=movement]").evaluate_all(
                "rows => rows.map(r => r.dataset.kind)")
            assert sorted(kinds) == ["charged", "deposit", "refund"], kinds
            expect(page.get_by_test_id("header-balance")).not_to_contain_text("in escrow")
            expect(page.get_by_test_id("month-csv")).to_have_count(1)  # the statement to download
            assert page.evaluate("window.__marker") == 1
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            # The other organization's page was told nothing and shows nothing of it.
            assert theirs.evaluate("window.__marker") == 1
            assert theirs.evaluate("document.body.getAttribute('data-account-refreshed')") is None
            expect(theirs.get_by_test_id("no-movements")).to_be_visible()
        finally:
            browser.close()
