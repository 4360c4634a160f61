"""A provider adds a machine with the one-time command, in headless Chromium: Add a machine,
'Get the command', the command run on the machine (a real `computemesh-agent register`,
then the agent), and My nodes shows the machine online without a reload; My offers shows
its draft offer, not listed."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.models import Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, sign_in
from .factories import OrganizationFactory, UserFactory
from .stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.integration,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]


def test_a_provider_adds_a_machine_with_the_one_time_command_and_sees_it_online(
        transactional_db, tmp_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    provider = OrganizationFactory(name="Nordic GPU", slug="nordic-gpu", kind=Organization.Kind.PROVIDER)
    UserFactory(username="carol", organization=provider)
    stack = Stack(tmp_path)
    stack.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 390, "height": 844})
                sign_in(page, stack.base, "carol")
                page.goto(f"{stack.base}/provider/nodes/new/")
                page.select_option("#register-region", "EU-FI")
                page.get_by_role("button", name="Get the command").click()
                command = page.get_by_test_id("register-command").inner_text().split()
                assert command[:2] == ["computemesh-agent", "register"]
                assert command[-2:] == ["--url", stack.base]

                workdir = tmp_path / "machine"
                done = subprocess.run([sys.executable, "-m", "workers.agent", *command[1:], "--workdir",
                                       str(workdir), "--name", "hel-cpu-1"],
                                      env=stack.env, capture_output=True, text=True, timeout=180, check=False)
                assert done.returncode == 0, done.stdout + done.stderr
                start = re.search(r"start the agent:\s+computemesh-agent (.+)", done.stdout)
                assert start, done.stdout

                page.goto(f"{stack.base}/provider/nodes/")
                row = page.locator("tr[data-node-id]", has_text="hel-cpu-1")
                expect(row.locator(".js-status")).to_have_text("Waiting for its agent")
                page.wait_for_selector('body[data-live-dashboard="open"]', state="attached", timeout=10_000)
                # The agent as the command said to start it (it finds the saved token).
                stack._spawn("agent", [sys.executable, "-m", "workers.agent", *start.group(1).split(),
                                       "--workdir", str(workdir), "--plain", "--heartbeat", "1"])
                expect(row.locator(".js-status")).to_have_text("Online", timeout=90_000)

                page.goto(f"{stack.base}/provider/offers/")
                expect(page.locator("body")).to_contain_text("hel-cpu-1")
                expect(page.locator("body")).to_contain_text("Draft")
            finally:
                browser.close()
    finally:
        stack.stop()
