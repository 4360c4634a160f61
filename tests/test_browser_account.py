"""A new organization funds its first job with the faucet, in headless Chromium at a laptop's
1366 × 900 and a phone's 390 × 844 (issue 18): it signs up, gets a development wallet, has
no browser wallet (the escrow panel says what to do instead), takes test tUSD from the
faucet, funds the job from the development wallet, and finds every movement with its
transaction on the Account page, with its balance in the header and a statement to
download.

The chain is the in-process EVM served over JSON-RPC (`chain.devchain`, what `make demo`
runs), shared by daphne and this process; the indexer runs in a thread here, standing in
for Celery's `chain_sync`."""

import csv
import io
from decimal import Decimal
from pathlib import Path

import pytest

from marketplace.chain import deploy, devchain
from marketplace.models import Escrow, FaucetGrant, Job, Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, asgi_server
from .factories import JobFactory
from .test_browser_wallet import chain_sync_thread

pytestmark = [
    pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(600),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium"),
]
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
FITS = "document.documentElement.scrollWidth <= window.innerWidth"
WIDEST = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 6).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""
RESULTS = ROOT / "test-results"


@pytest.fixture
def dev_chain(transactional_db, settings, monkeypatch):
    """The served development chain with the contracts deployed, for daphne and this process."""
    server, url = devchain.serve()
    settings.CHAIN_RPC_URL, settings.ESCROW_ENABLED = url, True
    monkeypatch.setenv("CHAIN_RPC_URL", url)
    monkeypatch.setenv("ESCROW_ENABLED", "1")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    deploy.deploy()
    try:
        yield url
    finally:
        server.close()


def sign_up(page, base: str, username: str, organization: str) -> None:
    page.goto(f"{base}/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password", "demo-pass-123")
    page.fill("#id_password_again", "demo-pass-123")
    page.fill("#id_organization_name", organization)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/offers/")


def first_job_funded_with_the_faucet(browser, base: str, size: dict, username: str,
                                     organization: str) -> Job:
    """The journey in one viewport; returns the job it funded."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport=size, accept_downloads=True)
    page.set_default_timeout(15_000)
    sign_up(page, base, username, organization)
    org = Organization.objects.get(name=organization)
    wallet = org.wallets.get(kind="custodial")  # a development wallet from the start
    job = JobFactory(owner=org, name=f"First model of {organization}", budget="25",
                     status=Job.Status.SUBMITTED)

    page.goto(f"{base}/jobs/{job.pk}/")
    # No browser wallet: the panel says what to do instead of offering a dead button.
    expect(page.get_by_test_id("no-browser-wallet")).to_be_visible()
    expect(page.get_by_test_id("no-browser-wallet")).to_contain_text("development chain")
    expect(page.get_by_test_id("fund-browser")).to_be_hidden()
    page.get_by_test_id("fund-faucet").click()
    expect(page.locator(".message-success")).to_contain_text("1,000.00 tUSD of test tUSD minted")
    expect(page.locator(".message-success")).to_contain_text(wallet.address)
    assert page.evaluate(FITS), (size, page.evaluate(WIDEST))
    if size is LAPTOP:  # the header's balance (on a phone it is in the folded menu)
        expect(page.get_by_test_id("header-available")).to_have_text("1,000.00")

    page.get_by_test_id("fund-custodial").click()
    expect(page.locator(".message-success")).to_contain_text("Funding sent to the chain")
    with chain_sync_thread() as errors:
        for _ in range(60):
            if Escrow.objects.filter(job=job, status=Escrow.Status.FUNDED).exists():
                break
            page.wait_for_timeout(500)
    assert not errors, errors
    page.goto(f"{base}/jobs/{job.pk}/")
    expect(page.get_by_test_id("escrow-status")).to_have_text("Funded")
    expect(page.get_by_test_id("escrow-summary")).to_contain_text("25.00 tUSD held")

    page.goto(f"{base}/account/")
    assert page.evaluate(FITS), (size, page.evaluate(WIDEST))
    expect(page.get_by_test_id("balance-available")).to_have_text("975.00")
    expect(page.get_by_test_id("balance-escrowed")).to_have_text("25.00")
    kinds = page.locator("[data-testid=movement]").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert kinds == ["deposit", "faucet"], kinds
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / f"account-{size['width']}.png"), full_page=True)
    # A month's statement downloads as CSV with both movements.
    with page.expect_download() as download:
        page.get_by_test_id("month-csv").first.click()
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert sorted((r[1], r[5]) for r in rows[1:]) == [("deposit", "25.000000"), ("faucet", "1000.000000")]
    # The deposit's transaction page: the amount, the parties, the job, the chain by name.
    page.locator("[data-kind=deposit] [data-testid=movement-tx]").click()
    expect(page.get_by_test_id("tx-chain")).to_contain_text("development chain")
    expect(page.get_by_test_id("tx-amount").first).to_have_text("25.00 tUSD")
    expect(page.get_by_test_id("tx-job")).to_contain_text(job.name)
    expect(page.get_by_test_id("tx-moves")).to_contain_text(f"{organization}'s wallet (yours)")
    assert FaucetGrant.objects.filter(organization=org).count() == 1
    page.close()
    return job


def test_a_new_organization_funds_its_first_job_with_the_faucet(dev_chain):
    from playwright.sync_api import sync_playwright

    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            jobs = [first_job_funded_with_the_faucet(browser, base, LAPTOP, "hana", "Cardia Labs"),
                    first_job_funded_with_the_faucet(browser, base, PHONE, "ines", "Neuro Start")]
        finally:
            browser.close()
    # Each new organization's first job is funded on the chain from its own development
    # wallet, with the faucet's test tUSD: one grant each, 1,000 minted, 25 deposited.
    for job in jobs:
        escrow = Escrow.objects.get(job=job)
        wallet = job.owner.wallets.get(kind="custodial")
        assert (escrow.status, escrow.amount, escrow.consumer_address.lower()) == (
            Escrow.Status.FUNDED, Decimal("25"), wallet.address.lower())
        assert list(FaucetGrant.objects.filter(organization=job.owner).values_list("amount", flat=True)) == [
            Decimal("1000")]
