"""A node of a running multi-node job whose agent is SIGKILLed with its training ranks and
started again (same work folder, same token, as a rebooted machine) loses its own part; the
node that was training beside it did nothing wrong and is not blamed. Real parts: daphne,
a Celery worker with beat, PostgreSQL, Redis, three agent processes, gloo across two of them.
"""

import os
import signal
from decimal import Decimal

import pytest
from rest_framework.authtoken.models import Token

from marketplace.models import Assignment, Job, Node, Organization
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create

from .factories import UserFactory
from .stack import Stack, wait_for
from .test_execution_e2e import _training_processes, job_body

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    s.env["VERIFY_REPLAY_SHARE"] = "0.01"  # about losing a node, not verification: replay 1 %
    s.start()
    yield s
    s.stop()


@pytest.fixture
def consumer_token():
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    return Token.objects.create(user=UserFactory(username="alice", organization=org)).key


def nodes(prices: list[str]) -> list[tuple[int, str]]:
    """CPU nodes (2 slots each) at these prices: (node id, agent token)."""
    provider = organization_create(name="Local CPU Lab", kind=Organization.Kind.PROVIDER)
    out = []
    for i, price in enumerate(prices):
        node, token = node_create(provider=provider, spec=NodeSpec(
            name=f"cpu-{i}", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
            disk_gb=20, region="EU-DE"))
        offer_create(provider=provider, node=node,
                     spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal(price)))
        out.append((node.pk, token))
    return out


def kill_machine(stack: Stack, name: str) -> None:
    """The agent and its training ranks, SIGKILLed at once (the ranks run in a session of
    their own, so killing the agent's process group leaves them)."""
    ranks = _training_processes(stack.tmp / name)
    assert ranks, f"{name} runs no training"
    stack.kill(name)
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("victim_rank", [1, 0])
def test_a_restarted_agent_loses_its_part_and_its_healthy_peer_is_not_blamed(stack, consumer_token,
                                                                               victim_rank):
    machines = nodes(["0.05", "0.05", "0.50"])  # the third, dearer, is the spare
    names = {node_id: f"agent-{i}" for i, (node_id, _) in enumerate(machines)}
    tokens = dict(machines)
    for node_id, token in machines:
        stack.agent(names[node_id], token)
    wait_for(lambda: Node.objects.filter(status=Node.Status.ONLINE).count() == 3, timeout=90,
             what="the three agents to be online")
    code, body = stack.http("POST", "/api/v1/jobs/", token=consumer_token, body=job_body(
        nodes=2, template="image-classifier", dataset="sample:digits",
        params={"epochs": 60, "batch_size": 16, "checkpoint_every": 10}))
    assert code == 201, body
    job = Job.objects.get(pk=body["id"])
    wait_for(lambda: job.checkpoints.filter(committed_at__isnull=False, step__gte=20).exists(),
             timeout=300, what="a committed checkpoint")
    first = {a.node_rank: a for a in job.assignments.filter(attempt=1)}
    victim, survivor = first[victim_rank], first[1 - victim_rank]
    assert {victim.node_id, survivor.node_id} <= set(names) and len(first) == 2

    kill_machine(stack, names[victim.node_id])
    stack.agent(names[victim.node_id], tokens[victim.node_id])  # back at once, without its work

    def replaced():
        job.refresh_from_db()
        return job.attempt >= 2 and job.status == Job.Status.RUNNING
    wait_for(replaced, timeout=240, what="the job to run again")
    victim.refresh_from_db()
    survivor.refresh_from_db()
    assert victim.status == Assignment.Status.LOST, (victim.status, victim.detail)
    # The survivor's ranks failed when their peer died, or it was stopped when the job was
    # interrupted, whichever came first; either way it is neither lost nor excluded.
    assert survivor.status in (Assignment.Status.FAILED, Assignment.Status.CANCELLED), survivor.status
    assert job.excluded_nodes == [victim.node_id]
    again = set(job.assignments.filter(attempt=2).values_list("node_id", flat=True))
    assert survivor.node_id in again and victim.node_id not in again
