"""User-supplied names lose control and bidirectional-control characters at input (the
services every form and API call goes through: marketplace/text.py), and pages escape what
is left."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.models import Dataset, Job, Organization
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import node_create
from marketplace.text import clean_name, clean_text

from .api_support import job_body
from .test_services_nodes_offers import SPEC

pytestmark = pytest.mark.django_db
DIRTY = "Cohort\x00 A\x1b[31m\u202e\tlab\x7f\u0085\n"


def test_clean_name_and_clean_text():
    assert clean_name(DIRTY) == "Cohort A[31m lab"
    assert clean_name("  Zürich — ☢ 東京  ") == "Zürich — ☢ 東京"  # letters and symbols stay
    assert clean_text("line one\r\nline\x00 two\t\u2066x") == "line one\nline two\tx"
    assert clean_name(None) == "" and clean_text("\x00\x01") == ""


def test_organization_job_node_and_dataset_names_are_cleaned(api, client, alice, healthcare, provider_org,
                                                              settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    org = organization_create(name="Helio\x00 Grid\u202e", kind="consumer")
    assert Organization.objects.get(pk=org.pk).name == "Helio Grid"
    created = api.as_user(alice).post("/api/v1/jobs/", job_body(name="Sepsis\x07 model\n<script>"),
                                      format="json")
    assert created.status_code == 201, created.json()
    job = Job.objects.get(pk=created.json()["id"])
    assert job.name == "Sepsis model <script>"
    node, _ = node_create(provider=provider_org, spec=SPEC.__class__(**{**SPEC.__dict__,
                                                                      "name": "gpu\x00-01\u202e"}))
    assert node.name == "gpu-01"
    csv = b"label,f1\n" + b"".join(b"%d,%d\n" % (i % 2, i) for i in range(12))
    uploaded = api.as_user(alice).post("/api/v1/datasets/", {
        "file": SimpleUploadedFile("vitals.csv", csv, "text/csv"), "name": "ICU\x1b vitals\u2067"},
        format="multipart")
    assert uploaded.status_code == 201, uploaded.json()
    assert Dataset.objects.get(pk=uploaded.json()["id"]).name == "ICU vitals"

    # What is left is escaped on the pages.
    client.force_login(alice)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Sepsis model &lt;script&gt;" in page and "Sepsis model <script>" not in page
