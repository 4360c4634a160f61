"""A consumer in headless Chromium links a browser wallet with Sign-In with Ethereum and funds a
job's escrow from it, against a real JSON-RPC node (hardhat 3) and the real ASGI server.

The wallet is an EIP-1193 provider injected into the page (`window.ethereum`): its `request`
goes to Python (`expose_function`), which answers the account requests itself (one hardhat
account, in lower case as wallets answer) and forwards everything else to the node, which
signs `personal_sign` and `eth_sendTransaction` for its unlocked accounts. Nothing is mocked
on the platform's side: daphne and this process share the test database and the node.

The chain indexer runs in a thread of this process every 0.5 s, standing in for the Celery
beat `chain_sync` task (every 3 s in production); the live job page then gets the status
change over its WebSocket, through Redis, from that thread."""

import threading
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from marketplace.chain import deploy, indexer
from marketplace.models import Escrow, Job, Organization, Wallet

from .browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, asgi_server
from .chain_node import ACCOUNTS, CHAIN_ID, HARDHAT, NODE, dev_node, rpc
from .factories import JobFactory, OrganizationFactory, UserFactory

pytestmark = [
    pytest.mark.browser, pytest.mark.integration,
    # How long a whole run may take is machine speed; a hang is what this limit catches.
    pytest.mark.timeout(600),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium"),
    pytest.mark.skipif(not (NODE.exists() and HARDHAT.exists()), reason="needs `make contracts`"),
]
RESULTS = ROOT / "test-results"
WALLET = ACCOUNTS[1][0]  # hardhat's second account (the first pays the platform's gas)
BUDGET = Decimal("12.5")

# The wallet: EIP-1193's `request({method, params})`, answered by Python. A test hook keeps
# every message the escrow panel shows, to check the steps the page walked through.
INJECTED_WALLET = """
(() => {
  window.ethereum = {
    isComputeMeshTestWallet: true,
    request: ({ method, params }) => window.__walletRequest(method, params || []),
    on: () => {}, removeListener: () => {},
  };
  window.__fundMessages = [];
  new MutationObserver(() => {
    const el = document.querySelector('[data-live="fund-message"]');
    const text = el && el.textContent;
    const seen = window.__fundMessages;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(document, { childList: true, subtree: true, characterData: true });
})();
"""


@contextmanager
def chain_sync_thread(every: float = 0.5):
    """The indexer, as Celery's `chain_sync` runs it, on its own database connection."""
    stop, errors = threading.Event(), []

    def loop():
        try:
            while not stop.is_set():
                try:
                    indexer.index_events()
                except Exception as exc:  # kept for the test to show; the loop goes on
                    errors.append(exc)
                stop.wait(every)
        finally:
            connection.close()

    thread = threading.Thread(target=loop, name="chain-sync", daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the chain-sync thread did not stop within 20 s"


def shot(page, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(RESULTS / f"{name}.png"), full_page=True)


def test_link_wallet_with_siwe_and_fund_a_job_from_it(transactional_db, settings, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    RESULTS.mkdir(exist_ok=True)
    with dev_node() as rpc_url:
        # This process (deploying, minting, indexing) and daphne use the same node.
        settings.CHAIN_RPC_URL, settings.ESCROW_ENABLED = rpc_url, True
        monkeypatch.setenv("CHAIN_RPC_URL", rpc_url)
        monkeypatch.setenv("ESCROW_ENABLED", "1")
        contracts = deploy.deploy()
        deploy.mint_to(WALLET, Decimal("40"))
        token = deploy.token_contract()
        org = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
        alice = UserFactory(username="alice", organization=org)
        job = JobFactory(owner=org, created_by=alice, name="Sepsis risk v3", budget=BUDGET,
                         status=Job.Status.SUBMITTED)

        calls: list[str] = []

        def wallet_request(method: str, params: list):
            calls.append(method)
            if method in ("eth_requestAccounts", "eth_accounts"):
                return [WALLET.lower()]
            if method == "wallet_switchEthereumChain":
                if int(params[0]["chainId"], 16) != CHAIN_ID:
                    raise RuntimeError("this wallet knows only the development chain")
                return None
            return rpc(rpc_url, method, params, timeout=10)

        with asgi_server() as base, chain_sync_thread() as sync_errors, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1360, "height": 900})
                context.expose_function("__walletRequest", wallet_request)
                context.add_init_script(INJECTED_WALLET)
                page = context.new_page()
                page.set_default_timeout(15_000)
                page.goto(base + "/login/")
                page.fill("#id_username", "alice")
                page.fill("#id_password", "demo-pass-123")
                page.click("button[type=submit]")
                page.wait_for_url(base + "/")

                # Link: nonce, the EIP-4361 message built in the page, personal_sign, post.
                page.click("nav >> text=Wallets")
                expect(page.get_by_test_id("no-wallet")).to_be_hidden()
                page.get_by_test_id("link-wallet").click()
                expect(page.get_by_test_id("wallets")).to_contain_text(WALLET)  # after the reload
                assert calls[:2] == ["eth_requestAccounts", "personal_sign"], calls
                shot(page, "wallets-linked")
                wallet = Wallet.objects.get(address=WALLET)
                assert (wallet.organization, wallet.kind, wallet.linked_by) == (org, "external", alice)

                # Fund: fund-calls, chain check, approve, fund, receipts; then the indexer.
                page.goto(f"{base}/jobs/{job.pk}/")
                expect(page.get_by_test_id("escrow-status")).to_have_text("Not funded yet")
                expect(page.get_by_test_id("live-indicator")).to_have_text("Live")
                held = token.functions.balanceOf(WALLET).call()
                page.get_by_test_id("fund-browser").click()
                expect(page.get_by_test_id("escrow-status")).to_have_text("Funded", timeout=60_000)
                expect(page.get_by_test_id("job-status")).not_to_have_text("submitted")
                expect(page.get_by_test_id("escrow")).to_contain_text("12.50")
                expect(page.get_by_test_id("escrow-transactions")).to_contain_text("fund")
                messages = page.evaluate("window.__fundMessages")
                shot(page, "job-funded-from-wallet")
            finally:
                browser.close()
                # Playwright's greenlet has its own context, hence its own database connection.
                connection.close()
        assert not sync_errors, sync_errors
        steps = " | ".join(messages)
        for words in ("Step 1 of 2: allow the escrow contract to take 12.50 tUSD",
                      "Step 2 of 2: fund the escrow with 12.50 tUSD", "Funded on chain in block"):
            assert words in steps, steps
        sent = [c for c in calls if c == "eth_sendTransaction"]
        assert len(sent) == 2 and "eth_chainId" in calls and "eth_getTransactionReceipt" in calls, calls
        escrow = Escrow.objects.get(job=job)
        assert escrow.status == Escrow.Status.FUNDED and escrow.amount == BUDGET
        assert escrow.consumer_address == WALLET
        job.refresh_from_db()
        assert job.status != Job.Status.SUBMITTED
        assert job.events.filter(reason="escrow_funded", to_status=Job.Status.FUNDED).exists()
        assert token.functions.balanceOf(WALLET).call() == held - 12_500_000
        assert token.functions.balanceOf(contracts["escrow"]).call() == 12_500_000
