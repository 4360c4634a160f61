"""Accessibility: axe-core (vendored in tests/vendor/axe-core, nothing downloaded) checks the
main pages in headless Chromium, as a consumer and as a provider, at a laptop's and a
phone's width, and the test fails on any serious or critical violation (WCAG 2.x A and AA
rules, and axe's best practices)."""

from pathlib import Path

import pytest

from .browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, asgi_server
from .test_browser_responsive import LAPTOP, PHONE, login, world  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600),
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map(n => n.target.join(" ") + ": "
                                       + (n.failureSummary || "").split("\\n")[1])}));
}"""


def violations(page, url: str) -> list[dict]:
    page.goto(url)
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)  # htmx fragments (the header's balance, the quote) settle
    page.add_script_tag(path=str(AXE))
    return [v for v in page.evaluate(RUN_AXE) if v["impact"] in BLOCKING]


def test_main_pages_have_no_serious_or_critical_violations(world, monkeypatch):  # noqa: F811
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    job = world
    pages = {"alice": ["/", "/offers/?online=false", "/jobs/new/", f"/jobs/{job.pk}/", "/jobs/", "/account/",
                       "/wallets/", "/datasets/"],
             "carol": ["/provider/nodes/", "/provider/nodes/new/", "/provider/offers/",
                       "/provider/offers/new/", "/account/", "/provider/stake/"],
             None: ["/", "/offers/", "/login/", "/signup/"]}
    found: dict[str, list] = {}
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for who, urls in pages.items():
                if who is None:
                    page = browser.new_page(viewport=LAPTOP)
                else:
                    page = login(browser, base, who)
                for size in (LAPTOP, PHONE):
                    page.set_viewport_size(size)
                    for url in urls:
                        bad = violations(page, base + url)
                        if bad:
                            found[f"{who or 'visitor'} {url} at {size['width']} px"] = bad
                page.close()
        finally:
            browser.close()
    assert not found, "\n".join(f"{where}: {v['impact']} {v['id']} ({v['help']}): {v['nodes']}"
                                for where, bad in found.items() for v in bad)
