"""Chromium: a code bundle and a zip dataset uploaded through their pages with the
resumable uploader (static/js/resumable_upload.js): the SHA-256 computed in the browser
matches the server's, the progress bar runs to the end, the bundle is listed (issue 16)."""

import hashlib
import os
import zipfile

import pytest

from marketplace.models import CodeBundle, Dataset, Organization

from .browser_support import CHROMIUM, CHROMIUM_ARGS, asgi_server, sign_in
from .factories import OrganizationFactory, UserFactory
from .test_api_bundles import MANIFEST, RUNTIME


@pytest.fixture
def alice(transactional_db):
    org = OrganizationFactory(name="Medisight", slug="medisight", kind=Organization.Kind.CONSUMER)
    return UserFactory(username="alice", organization=org)


def test_bundle_and_zip_dataset_uploads_from_the_browser(alice, tmp_path, monkeypatch, settings):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    bundle = tmp_path / "classifier.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("computemesh.toml", MANIFEST)
        z.writestr("pkg/__init__.py", b"")
        z.writestr("pkg/task.py", b"class Classifier:\n    pass\n")
    images = tmp_path / "scans.zip"
    with zipfile.ZipFile(images, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(12):  # 12 MB: several of the page's 8 MB chunks... and a SHA over slices
            z.writestr(f"{'benign' if i % 2 else 'malignant'}/{i}.bin", os.urandom(1_048_576))
    with asgi_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            sign_in(page, base, "alice")
            page.wait_for_url(base + "/")
            page.goto(base + "/bundles/")
            page.set_input_files("#bundle-file", str(bundle))
            page.click("[data-testid=bundle-form] button[type=submit]")
            expect(page.get_by_test_id("bundles")).to_contain_text("classifier.zip")
            expect(page.get_by_test_id("bundles")).to_contain_text(RUNTIME)

            page.goto(base + "/datasets/")
            page.set_input_files("#large-file", str(images))
            page.click("[data-testid=dataset-resumable-form] button[type=submit]")
            expect(page.get_by_test_id("datasets")).to_contain_text("12 files")
        finally:
            browser.close()
    stored = CodeBundle.objects.get()
    assert stored.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()
    dataset = Dataset.objects.get()
    assert dataset.kind == "zip" and dataset.sha256 == hashlib.sha256(images.read_bytes()).hexdigest()
