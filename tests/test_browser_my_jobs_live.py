"""*My jobs* adds a job submitted elsewhere (here through the API) without a reload, in
headless Chromium against daphne and the Redis channel layer; another organization's
submission never shows."""

import json
import re
import urllib.request
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from marketplace.models import Organization

from .api_support import job_body
from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server, sign_in
from .factories import OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                      reason="needs /usr/bin/chromium")]


def submit(base: str, user, name: str) -> int:
    """POST /api/v1/jobs/ as `user`, as the client would."""
    token = Token.objects.get_or_create(user=user)[0].key
    request = urllib.request.Request(
        f"{base}/api/v1/jobs/", data=json.dumps(job_body(name=name)).encode(), method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        return json.load(response)["id"]


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "mobile"])
def test_a_job_submitted_through_the_api_appears_on_my_jobs(transactional_db, monkeypatch, viewport):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    mine = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    alice = UserFactory(username="alice", organization=mine)
    other = OrganizationFactory(name="GridCast", slug="gridcast", kind=Organization.Kind.CONSUMER)
    bob = UserFactory(username="bob", organization=other)
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            sign_in(page, base, "alice")
            page.goto(f"{base}/jobs/")
            expect(page.get_by_test_id("no-jobs")).to_be_visible()
            page.evaluate("window.__marker = 1")  # gone if the page reloads
            page.wait_for_selector('body[data-live-dashboard="open"]', state="attached", timeout=10_000)

            theirs = submit(base, bob, "GridCast load forecast")
            job_id = submit(base, alice, "Sepsis risk, submitted by the API")
            row = page.locator(f'tr[data-job-id="{job_id}"]')
            expect(row).to_be_visible(timeout=10_000)
            expect(row).to_contain_text("Sepsis risk, submitted by the API")
            # Submitted, then funded at once where the platform runs without the escrow.
            expect(row.locator(".js-status .chip")).to_have_text(re.compile(r"^(submitted|funded|matching)$"))
            expect(page.get_by_test_id("no-jobs")).to_be_hidden()
            # The other organization's job was submitted first: had it been sent, it would be here.
            assert page.locator(f'tr[data-job-id="{theirs}"]').count() == 0
            assert page.locator("tr[data-job-id]").count() == 1
            assert page.evaluate("window.__marker") == 1
        finally:
            browser.close()


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "mobile"])
def test_a_status_filter_follows_status_changes(transactional_db, monkeypatch, viewport):
    """Issue 18: on *My jobs* filtered by status, a job whose status changes so that it no
    longer matches leaves the list, and one that comes to match appears, without a reload."""
    from playwright.sync_api import expect, sync_playwright

    from marketplace import job_states
    from marketplace.models import Job

    from .factories import JobFactory
    from .test_browser_live import elsewhere

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    mine = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    UserFactory(username="alice", organization=mine)
    leaving = JobFactory(owner=mine, name="Sepsis risk", status=Job.Status.MATCHING)
    staying = JobFactory(owner=mine, name="Readmission", status=Job.Status.MATCHING)
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            sign_in(page, base, "alice")
            page.goto(f"{base}/jobs/?status=active")
            expect(page.locator("tr[data-job-id]")).to_have_count(2)
            page.evaluate("window.__marker = 1")  # gone if the page reloads
            page.wait_for_selector('body[data-live-dashboard="open"]', state="attached", timeout=10_000)

            elsewhere(lambda: job_states.transition(job_id=leaving.pk, to=Job.Status.CANCELLED,
                                                    reason="test", message="Cancelled from the test."))
            expect(page.locator(f'tr[data-job-id="{leaving.pk}"]')).to_have_count(0, timeout=10_000)
            expect(page.locator(f'tr[data-job-id="{staying.pk}"]')).to_have_count(1)
            elsewhere(lambda: job_states.transition(job_id=staying.pk, to=Job.Status.CANCELLED,
                                                    reason="test", message="Cancelled from the test."))
            expect(page.locator("tr[data-job-id]")).to_have_count(0, timeout=10_000)
            expect(page.get_by_test_id("no-match")).to_be_visible()

            # The other way: a list of cancelled jobs gains a job as it is cancelled.
            page.goto(f"{base}/jobs/?status=cancelled")
            expect(page.locator("tr[data-job-id]")).to_have_count(2)
            newcomer = JobFactory(owner=mine, name="Imaging triage", status=Job.Status.MATCHING)
            page.wait_for_selector('body[data-live-dashboard="open"]', state="attached", timeout=10_000)
            page.evaluate("window.__marker = 2")
            elsewhere(lambda: job_states.transition(job_id=newcomer.pk, to=Job.Status.CANCELLED,
                                                    reason="test", message="Cancelled from the test."))
            expect(page.locator(f'tr[data-job-id="{newcomer.pk}"]')).to_have_count(1, timeout=10_000)
            assert page.evaluate("window.__marker") == 2
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        finally:
            browser.close()
