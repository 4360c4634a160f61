"""Budget safety through the real platform (escrow off: the budget is Job.budget): daphne,
a Celery worker with beat (budget_watch every second), an agent process and gloo ranks.
A job warned at 80 % checkpoints and pauses at its budget (not failed), the owner raises
the budget, and it resumes from that checkpoint and completes: the step counter never
restarts from 0."""

import os
import signal
import threading
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from marketplace.models import Assignment, Job, Organization
from marketplace.services.accounts import organization_create

from .factories import UserFactory
from .stack import Stack, wait_for
from .test_execution_e2e import cpu_nodes, job_body, wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(900)]


def _descendants(pid: int) -> dict[int, str]:
    """The processes below `pid` and their command lines, read from /proc."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it ended meanwhile
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = commands.get(child, "")
                todo.append(child)
    return found


class TrainingHeld:
    """Hold the training an agent starts frozen (SIGSTOP) until the platform's pause reaches
    the agent (its `pause` file exists), so that the work cannot finish before the pause is
    due whatever the machine's speed. The launcher is caught while it is still importing
    torch, before any rank exists; ranks started by then are frozen too."""

    def __init__(self, agent, agent_dir: Path):
        self.agent_pid, self.agent_dir = agent.pid, agent_dir
        self.frozen: list[int] = []
        self.stop, self.errors = threading.Event(), []
        self.thread = threading.Thread(target=self._hold, name="hold-training", daemon=True)

    def paused(self) -> bool:
        return any(self.agent_dir.glob("assignments/*/pause"))

    def _hold(self) -> None:
        try:
            while not self.stop.is_set() and not self.paused():
                for pid, command in _descendants(self.agent_pid).items():
                    if pid not in self.frozen and "workers.training" in command:
                        os.kill(pid, signal.SIGSTOP)
                        self.frozen.append(pid)
                self.stop.wait(0.02)
        except OSError as exc:
            self.errors.append(exc)
        finally:
            for pid in self.frozen:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the hold on the training did not end"


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    s.env.update({"BUDGET_CHECK_INTERVAL_S": "1", "BUDGET_PAUSE_LEAD_S": "2", "BUDGET_PAUSE_GRACE_S": "90"})
    s.start()
    yield s
    s.stop()


def test_a_job_at_its_budget_checkpoints_pauses_and_resumes_from_there_after_a_raise(stack):
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    alice = Token.objects.create(user=UserFactory(username="alice", organization=org)).key
    bob_org = organization_create(name="GridCast", kind=Organization.Kind.CONSUMER, sector="energy")
    bob = Token.objects.create(user=UserFactory(username="bob", organization=bob_org)).key
    (node_token,) = cpu_nodes(1, price="36")  # 2 CPU slots: 0.02 tUSD a second
    agent = stack.agent("budget-agent", node_token)
    # 0.12 tUSD: 6 s of running; the pause is asked for 2 s before (lead time). The training
    # is held frozen until the pause reaches the agent, so it cannot finish first on a fast
    # machine, and pauses at its next pause check (every 10 steps) once let go.
    with TrainingHeld(agent, stack.tmp / "budget-agent") as held:
        code, job = stack.http("POST", "/api/v1/jobs/", token=alice, body=job_body(
            template="image-classifier", dataset="sample:digits", budget="0.12",
            max_price_per_gpu_hour="40", params={"epochs": 40, "batch_size": 32, "checkpoint_every": 100}))
        assert code == 201, job
        job_id = job["id"]
        wait_for(held.paused, timeout=150, what="the platform's pause to reach the agent")
    assert held.frozen and not held.errors, (held.frozen, held.errors)
    paused = wait_status(stack, alice, job_id, {"paused"}, timeout=150)
    record = Job.objects.get(pk=job_id)
    first = record.assignments.get()
    reasons = [e["reason"] for e in paused["timeline"]]
    assert reasons.index("budget_warning") < reasons.index("budget_pausing") < reasons.index("budget_paused")
    step = paused["timeline"][-1]
    assert step["to_status"] == "paused" and f"Paused at step {record.current_step}" in step["message"]
    assert first.status == Assignment.Status.PAUSED  # the node checkpointed and stopped: not stopped by force
    ckpt = record.checkpoints.filter(committed_at__isnull=False).order_by("-step").first()
    assert ckpt is not None and ckpt.step == record.current_step >= 1 and ckpt.assignment_id == first.pk
    assert paused["spend"]["paused"] is True and paused["spend"]["warning"] is True
    assert record.total_steps == 880 and record.current_step < record.total_steps

    # Another tenant cannot raise it; the owner can, and retrying the raise changes nothing.
    code, _ = stack.http("POST", f"/api/v1/jobs/{job_id}/budget/", token=bob, body={"budget": "3"})
    assert code == 404
    for _ in range(2):
        code, body = stack.http("POST", f"/api/v1/jobs/{job_id}/budget/", token=alice, body={"budget": "3"})
        assert code == 200, body
    done = wait_status(stack, alice, job_id, {"completed"}, timeout=240)
    record.refresh_from_db()
    reasons = [e["reason"] for e in done["timeline"]]
    assert reasons.count("budget_raised") == 1 and reasons.count("budget_topped_up") == 1
    resumed = record.assignments.exclude(pk=first.pk).get()
    assert resumed.resume_step == ckpt.step and resumed.status == Assignment.Status.SUCCEEDED
    steps = list(record.metrics.filter(assignment=resumed).order_by("seq").values_list("step", flat=True))
    # It started at the checkpoint's step (its first report) and went on from there, not from 0.
    assert steps[0] == ckpt.step and min(steps) >= ckpt.step and max(steps) == 880
    assert record.current_step == record.total_steps == 880
    wait_for(lambda: "⏸ assignment" in (stack.logs / "budget-agent.log").read_text(), timeout=5,
             what="the agent to say it paused")
