"""A consumer's own code, DDP across two machines (issue 16): each agent runs on an emulated
host of its own (a network namespace on a bridge, tests/netns.py) with its own address, its
ranks in the sandbox's "peers" network, and the two nodes' ranks meet over gloo across the
link. The other multi-node bundle tests run both agents on 127.0.0.1, where a rank that
advertises the loopback address to its peers still works; here it cannot. Real parts
throughout: PostgreSQL, Redis, daphne, a Celery worker, agent CLIs, bubblewrap, nftables,
torch.distributed.run and gloo."""

import os
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from computemesh_client import Client
from django.utils import timezone

from marketplace.models import Job, LogLine, VerificationReport
from workers.agent import peer_firewall
from workers.agent import sandbox as sandboxing

from .netns import Hosts, NetnsUnavailable
from .stack import REDIS_URL, Stack, wait_for
from .test_bundle_e2e import EXAMPLE, custom_code_node, zipped
from .test_diloco_netns import consumer_token, start_agents, submit, wait_done  # noqa: F401 (a fixture)

FIREWALL_OK, WHY_NOT = peer_firewall.probe() if sandboxing.available() else (False, "no bubblewrap")
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration,
              pytest.mark.skipif(not FIREWALL_OK, reason=f"no peers firewall here: {WHY_NOT}")]


@pytest.fixture
def two_hosts(tmp_path):
    """Two provider hosts and the platform listening on the bridge between them."""
    try:
        hosts = Hosts(2, rate_mbit=0).up()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    stack = Stack(tmp_path, bind="0.0.0.0", redis_url=os.environ.get("REDIS_URL", REDIS_URL))
    stack.logs = tmp_path / "logs"  # not test-results/stack/: other stacks may run meanwhile
    stack.logs.mkdir()
    stack.env["ALLOWED_HOSTS"] = f"testserver,127.0.0.1,localhost,{hosts.gateway}"
    try:
        stack.start()
        yield hosts, stack
    finally:
        stack.stop()
        hosts.down()


def on_host(hosts: Hosts, i: int) -> tuple[str, ...]:
    """Run a command on host i, in its network namespace only: `ip netns exec` also mounts a
    sysfs of its own over /sys, which hides the cgroup v2 hierarchy the peers' firewall needs."""
    return ("nsenter", f"--net=/run/netns/{hosts.names[i]}")


def test_a_bundle_trains_with_ddp_across_two_machines_in_the_peers_sandbox(two_hosts, consumer_token,  # noqa: F811
                                                                            tmp_path):
    hosts, stack = two_hosts
    nodes = [custom_code_node("Honest Compute"), custom_code_node("Second Source")]
    for i, (_, node_token) in enumerate(nodes):
        stack.agent(f"agent-{i}", node_token, prefix=on_host(hosts, i), advertise=hosts.addr(i),
                    server=f"http://{hosts.gateway}:{stack.port}")

    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(tmp_path / "data"),
                    "--windows", "300"], check=True, capture_output=True)
    (tmp_path / "data.zip").write_bytes(zipped({"vibration.csv": tmp_path / "data" / "vibration.csv"}))
    (tmp_path / "task.zip").write_bytes(zipped({"task.py": EXAMPLE / "task.py",
                                                "computemesh.toml": EXAMPLE / "computemesh.toml"}))
    with Client(stack.base, consumer_token) as client:
        dataset = client.upload_dataset_resumable(tmp_path / "data.zip", name="pump-windows.zip")
        bundle = client.upload_bundle(tmp_path / "task.zip")
    code, job = stack.http("POST", "/api/v1/jobs/", token=consumer_token, body={
        "name": "Pump faults, two machines", "bundle": bundle["id"], "dataset": str(dataset["id"]),
        "params": {"epochs": 2, "batch_size": 32, "checkpoint_every": 10},
        "nodes": 2, "gpus_per_node": 1, "gpu_models": ["cpu"], "max_price_per_gpu_hour": "1.00",
        "budget": "10.00", "deadline": (timezone.now() + timedelta(days=1)).isoformat()})
    assert code == 201, job
    record = Job.objects.get(pk=job["id"])

    def ended():  # an assignment that failed ends the wait: its error says why
        record.refresh_from_db()
        return (record.status in ("completed", "failed", "interrupted")
                or record.assignments.filter(status="failed").exists())
    wait_for(ended, timeout=600, what="the bundle job to finish and be verified")
    logs = [(stack.logs / f"agent-{i}.log").read_text() for i in range(2)]
    report = VerificationReport.objects.filter(job=record).first()
    if record.status != "completed":  # what the ranks said, for the failure's reader
        for a in record.assignments.order_by("node_rank"):
            print(f"--- node rank {a.node_rank}: {a.status}", *LogLine.objects.filter(
                assignment=a).order_by("seq").values_list("line", flat=True), sep="\n")
    assert record.status == "completed", (
        record.status, report and report.reasons,
        list(record.assignments.values_list("node_rank", "status", "detail")))
    parts = record.assignments.filter(attempt=record.attempt).order_by("node_rank")
    assert [a.status for a in parts] == ["succeeded", "succeeded"]
    for i, log in enumerate(logs):
        # Each machine's sandbox was confined to its peers, the other machine among them, and its ranks
        # used the interface that holds its own advertised address.
        said = " ".join(log.split())  # the agent's display wraps long lines
        peers = re.search(r"confined to its peers \(([^)]*)\)", said)
        assert peers and hosts.addr(1 - i) in peers.group(1).split(", "), log[-2000:]
        assert f"collectives on eth0 ({hosts.addr(i)})" in said, log[-2000:]


def test_a_template_trains_with_ddp_across_two_machines_outside_the_sandbox(two_hosts, consumer_token):  # noqa: F811
    """The built-in templates' plain path (no sandbox): the host name of these machines
    resolves to 127.0.0.1 (/etc/hosts), so here too the ranks must be told their interface."""
    hosts, stack = two_hosts
    start_agents(hosts, stack, ["0.05", "0.05"])
    job_id = submit(stack, consumer_token, name="Sepsis risk, DDP on two machines",
                    params={"epochs": 5}, sync={"mode": "ddp"})
    wait_done(stack, consumer_token, job_id, timeout=300)  # completed: trained and verified
    parts = Job.objects.get(pk=job_id).assignments.order_by("node_rank")
    assert [a.status for a in parts] == ["succeeded", "succeeded"]
    for i in range(2):
        log = " ".join((stack.logs / f"agent-{i}.log").read_text().split())
        assert f"collectives on eth0 ({hosts.addr(i)})" in log, log[-2000:]
        assert "sandboxed" not in log
