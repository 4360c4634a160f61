"""Every node of a multi-node job shows that it is alive, not only the node of global rank 0.

Each node's agent stops its training as hung when its own ranks show nothing for the stall
timeout. Only global rank 0 reports progress, so a node whose ranks are all non-zero used to
show nothing at all, and every multi-node DDP job that trained longer than the timeout failed
("no progress for 180 s" while rank 0 was healthy). Real parts: daphne, a Celery worker with
beat, PostgreSQL, Redis, two agent processes and a gloo process group across them.
"""

import pytest
from rest_framework.authtoken.models import Token

from marketplace.models import Job, Node, Organization
from marketplace.services.accounts import organization_create

from .factories import UserFactory
from .stack import Stack, wait_for
from .test_execution_e2e import cpu_nodes, job_body

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

STALL_S = 10  # the agents' stall timeout here; the default is 180 s
# Their startup grace here; the default is 90 s. Shorter, so that the job trains several
# times longer than grace + stall on any machine (it takes about 140 s here).
GRACE_S = 40


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    s.env["AGENT_STALL_TIMEOUT_S"] = str(STALL_S)  # the agents read it (computemesh-agent --help)
    s.env["AGENT_STARTUP_GRACE_S"] = str(GRACE_S)
    # This is about training, not verification: replay 1 % of the steps instead of 10 %.
    s.env["VERIFY_REPLAY_SHARE"] = "0.01"
    s.start()
    yield s
    s.stop()


@pytest.fixture
def consumer_token():
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    return Token.objects.create(user=UserFactory(username="alice", organization=org)).key


def start_agents(stack: Stack, count: int) -> None:
    for i, token in enumerate(cpu_nodes(count)):
        stack.agent(f"agent-{i}", token)
    # Matching takes only connected nodes: submit once both are.
    wait_for(lambda: Node.objects.filter(status=Node.Status.ONLINE).count() == count, timeout=90,
             what="both agents to be online")


def training_seconds(job: Job) -> float:
    started = job.events.get(reason="started").created_at
    finished = job.events.get(reason="training_finished").created_at
    return (finished - started).total_seconds()


def run_watching_node_steps(stack: Stack, token: str, job_id: int, timeout: float) -> list[int]:
    """Wait for the job to complete; meanwhile collect the steps node rank 1 reported (its
    assignment's last_step, from its own agent's heartbeats). A part that ends otherwise than
    succeeded fails the test at once, with its reason."""
    seen: list[int] = []

    def poll():
        code, job = stack.http("GET", f"/api/v1/jobs/{job_id}/", token=token)
        assert code == 200, job
        for a in job["assignments"]:
            if a["status"] in ("failed", "lost", "cancelled"):
                part = Job.objects.get(pk=job_id).assignments.get(pk=a["id"])
                raise AssertionError(f"node rank {a['node_rank']} ended {a['status']}: {part.detail}")
            if a["node_rank"] == 1 and a["last_step"] is not None and a["last_step"] not in seen:
                seen.append(a["last_step"])
        return job["status"] == "completed"
    wait_for(poll, timeout=timeout, every=1.0, what=f"job {job_id} to complete")
    return seen


def test_a_two_node_ddp_job_trains_through_many_stall_timeouts_and_completes(stack, consumer_token):
    start_agents(stack, 2)
    # A few minutes of steps here: past the startup grace and many stall timeouts. Node rank 1
    # holds no global rank 0, so only its own leader's events show that it trains.
    code, body = stack.http("POST", "/api/v1/jobs/", token=consumer_token, body=job_body(
        nodes=2, template="image-classifier", dataset="sample:digits",
        params={"epochs": 150, "batch_size": 8}))
    assert code == 201, body
    steps = run_watching_node_steps(stack, consumer_token, body["id"], timeout=900)
    job = Job.objects.get(pk=body["id"])
    assert list(job.assignments.values_list("node_rank", "status")) == [(0, "succeeded"), (1, "succeeded")]
    # Long enough that the old runtime failed here: its node rank 1 showed nothing at all, and
    # its agent stopped it once the startup grace was over.
    assert training_seconds(job) >= max(4 * STALL_S, GRACE_S + STALL_S)
    # Node rank 1's own step reached the platform and moved on while it trained.
    assert len(steps) >= 3 and steps == sorted(steps), steps
    assert 0 < steps[-1] <= job.total_steps
