"""The whole live path in a real browser: a consumer opens a job's page, a real agent runs
the job with torch.distributed, and the page's chart gains points, its progress bar
advances and its timeline shows completion, without a reload."""

from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from marketplace.models import Organization
from marketplace.services.accounts import organization_create

from .browser_support import CHROMIUM, CHROMIUM_ARGS, sign_in
from .factories import UserFactory
from .stack import Stack
from .test_execution_e2e import cpu_nodes, job_body

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True),
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]


def test_a_consumer_watches_a_real_job_train_live(tmp_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    alice = UserFactory(username="alice", organization=org)
    token = Token.objects.create(user=alice).key
    (node_token,) = cpu_nodes(1)
    stack = Stack(tmp_path).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            sign_in(page, stack.base, "alice")
            code, job = stack.http("POST", "/api/v1/jobs/", token=token, body=job_body(
                template="image-classifier", dataset="sample:digits",
                params={"epochs": 10, "batch_size": 32, "checkpoint_every": 50}))
            assert code == 201, job
            page.goto(f"{stack.base}/jobs/{job['id']}/")
            expect(page.get_by_test_id("live-indicator")).to_have_text("Live", timeout=15_000)
            page.evaluate("window.__marker = 1")  # gone if the page reloads
            stack.agent("agent-a", node_token)  # the machine joins after the page is open
            page.wait_for_function("window.jobLive.state.points.length > 0", timeout=120_000)
            bar_width = "parseFloat(document.querySelector('[data-live=\"bar\"]').style.width)"
            first_width = page.evaluate(bar_width)
            expect(page.get_by_test_id("job-status")).to_have_text("completed", timeout=180_000)
            points = page.evaluate("window.jobLive.state.points.length")
            last_width = page.evaluate(bar_width)
            assert points > 10 and last_width == 100 and first_width < 100
            expect(page.get_by_test_id("timeline")).to_contain_text("verification_passed")
            expect(page.get_by_test_id("timeline")).to_contain_text("training_finished")
            assert page.evaluate("window.__marker") == 1
            seqs = page.evaluate("window.jobLive.state.points.map(p => p.seq)")
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
            page.screenshot(path=str(Path("test-results") / "job-live.png"), full_page=True)
            browser.close()
    finally:
        stack.stop()
