"""Adding a machine with one command (issue 18): the Add a machine page gives a one-time
code (short-lived, single-use, stored hashed, for the provider organization that asked) and
the command `computemesh-agent register --code … --url …`; redeeming it creates the node
and a draft offer that is not listed until the provider prices and publishes it."""

import hashlib
import os
import re
import stat
import subprocess
import sys
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.models import Node, NodeRegistrationCode, Offer
from marketplace.services.nodes import hash_token
from marketplace.services.registration import registration_code_issue

from .stack import Stack, wait_for

CPU_REPORT = {"hostname": "fra-box", "gpus": [], "gpu_count": 0, "gpu_model": "cpu", "cpu_cores": 8,
              "ram_gb": 32, "disk_free_gb": 200}
H100_REPORT = {"hostname": "h100-box", "gpu_count": 2, "gpu_model": "NVIDIA H100 80GB HBM3", "cpu_cores": 32,
               "ram_gb": 256, "disk_free_gb": 900,
               "gpus": [{"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_gb": 79} for i in range(2)]}


def redeem(code, report=CPU_REPORT, **extra):
    return APIClient().post(reverse("api:node-registrations"),
                            {"code": code, "hardware": report, "benchmark_tflops": 0.25, **extra},
                            format="json")


def command_code(html: str) -> str:
    match = re.search(r"computemesh-agent register --code (cmr_[\w-]+) --url (\S+?)<", html)
    assert match, html[:2000]
    return match.group(1)


@pytest.mark.django_db
def test_the_page_gives_a_one_time_command_and_keeps_only_the_codes_hash(client, carol, provider_org):
    client.force_login(carol)
    assert 'data-testid="register-with-code"' in client.get(reverse("provider_node_new")).content.decode()
    response = client.post(reverse("provider_node_register_code"), {"region": "EU-DE"})
    assert response.status_code == 200
    code = command_code(response.content.decode())
    row = NodeRegistrationCode.objects.get()
    assert row.provider == provider_org and row.region == "EU-DE" and row.created_by == carol
    assert row.code_hash == hashlib.sha256(code.encode()).hexdigest() and code not in row.code_hash
    assert timedelta(minutes=1) < row.expires_at - timezone.now() <= timedelta(minutes=15)
    assert client.post(reverse("provider_node_register_code"), {"region": "XX-XX"}).status_code == 400


@pytest.mark.django_db
def test_a_consumer_gets_no_code(client, alice):
    client.force_login(alice)
    assert client.post(reverse("provider_node_register_code"), {"region": "EU-DE"}).status_code == 403
    assert not NodeRegistrationCode.objects.exists()


@pytest.mark.django_db
def test_a_code_creates_the_node_and_a_draft_offer_once(carol, provider_org):
    code, _ = registration_code_issue(provider=provider_org, region="EU-DE", actor=carol)
    response = redeem(code, name="fra-1")
    assert response.status_code == 201, response.content
    body = response.json()
    node = Node.objects.get(pk=body["node"]["id"])
    assert node.provider == provider_org and node.name == "fra-1" and node.region == "EU-DE"
    assert (node.gpu_model, node.gpu_count, node.cpu_cores, node.ram_gb) == ("cpu", 8, 8, 32)
    assert node.token_hash == hash_token(body["token"]) and node.status == Node.Status.PENDING
    offer = Offer.objects.get(node=node)
    assert offer.status == Offer.Status.PAUSED and "Draft" in offer.status_reason  # not listed
    assert body["offer"] == {"id": offer.pk, "status": "paused", "gpus_offered": 8,
                             "price_per_gpu_hour": "1.000000"}
    again = redeem(code, name="fra-2")
    assert again.status_code == 403 and "already used" in again.json()["detail"]
    assert Node.objects.count() == 1


@pytest.mark.django_db
def test_an_expired_or_unknown_code_is_refused(provider_org):
    code, row = registration_code_issue(provider=provider_org, region="EU-DE")
    NodeRegistrationCode.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = redeem(code)
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]
    unknown = redeem("cmr_" + "x" * 32)
    assert unknown.status_code == 403 and "not valid" in unknown.json()["detail"]
    assert redeem(code, report="not a report").status_code == 400
    assert not Node.objects.exists()


@pytest.mark.django_db
def test_a_code_creates_nodes_only_for_the_organization_that_asked(carol, dave, provider_org,
                                                                   other_provider_org):
    """dave's organization's code gives dave's organization a node, never carol's, whatever
    the request says; and a user's token is no way to use a code for another organization."""
    code, _ = registration_code_issue(provider=other_provider_org, region="AP-SG", actor=dave)
    response = redeem(code, provider=provider_org.pk, organization=provider_org.pk)
    assert response.status_code == 201
    assert Node.objects.get().provider == other_provider_org
    assert not provider_org.nodes.exists()


@pytest.mark.django_db
def test_a_gpu_report_is_listed_as_the_catalogue_model():
    from marketplace.services.registration import gpu_model_of

    assert gpu_model_of(H100_REPORT) == ("H100 80GB", 2, 79)
    a100 = {"gpus": [{"name": "NVIDIA A100-SXM4-40GB", "memory_gb": 39.5}]}
    assert gpu_model_of(a100)[0] == "A100 40GB"


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_real_agent_registers_with_a_code_and_comes_online(tmp_path, client, carol, provider_org):
    stack = Stack(tmp_path)
    stack.start()
    try:
        client.force_login(carol)
        code = command_code(client.post(reverse("provider_node_register_code"), {"region": "EU-DE"})
                            .content.decode())
        workdir = tmp_path / "agent"
        cmd = [sys.executable, "-m", "workers.agent", "register", "--code", code, "--url", stack.base,
               "--workdir", str(workdir), "--name", "fra-cpu-1"]
        done = subprocess.run(cmd, env=stack.env, capture_output=True, text=True,
                              timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "registered node" in done.stdout and f"computemesh-agent --server {stack.base}" in done.stdout
        token_file = workdir / "token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        node = Node.objects.get(provider=provider_org, name="fra-cpu-1")
        assert node.token_hash == hash_token(token_file.read_text().strip())

        # The same code again: refused, nothing created, the saved token kept.
        again = subprocess.run(cmd, env=stack.env, capture_output=True, text=True, timeout=180, check=False)
        assert again.returncode == 3 and "already used" in again.stderr, again.stdout + again.stderr
        assert Node.objects.filter(provider=provider_org).count() == 1

        # The agent started as the command says (no --token: it reads the saved one).
        stack._spawn("agent", [sys.executable, "-m", "workers.agent", "--server", stack.base,
                               "--workdir", str(workdir), "--plain", "--heartbeat", "1"])
        wait_for(lambda: Node.objects.get(pk=node.pk).status == Node.Status.ONLINE, timeout=90,
                 what="the registered node to come online")
        page = client.get(reverse("provider_nodes")).content.decode()
        row = re.search(rf'<tr data-node-id="{node.pk}".*?</tr>', page, re.S)
        assert row and "fra-cpu-1" in row.group(0) and "Online" in row.group(0)
    finally:
        stack.stop()


@pytest.mark.django_db
def test_the_provider_prices_and_publishes_the_draft(carol, provider_org):
    from decimal import Decimal

    from marketplace.services.claims import node_hardware_report
    from marketplace.services.offers import OfferSpec, offer_set_status, offer_update

    code, _ = registration_code_issue(provider=provider_org, region="US-CA", actor=carol)
    body = redeem(code, H100_REPORT).json()
    node = Node.objects.get(pk=body["node"]["id"])
    assert (node.gpu_model, node.gpu_count, node.gpu_memory_gb) == ("H100 80GB", 2, 80)
    node_hardware_report(node=node, hardware=H100_REPORT)  # its agent's hello
    offer = Offer.objects.get(pk=body["offer"]["id"])
    offer = offer_update(provider=provider_org, offer=offer,
                         spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal("2.40")))
    assert offer.status == Offer.Status.PAUSED  # priced, still not listed
    offer_set_status(provider=provider_org, offer=offer, status=Offer.Status.ACTIVE)
    offer.refresh_from_db()
    assert offer.status == Offer.Status.ACTIVE and offer.status_reason == ""
    assert offer.price_per_gpu_hour == Decimal("2.40")
