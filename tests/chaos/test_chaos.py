"""Chaos: real jobs, paid through the escrow on a real JSON-RPC node (hardhat), while the
platform's parts are killed under them. Injected: agents SIGKILLed mid-job with their
training (every other one restarted at once, the rest once the heartbeat timeout has
written their work off), an agent that vanishes mid-job (the `vanish` fault), the Celery
workers SIGKILLed during dispatch (the one for matching, dispatch and verification, with
beat) and during settlement (the chain sender), the Redis server restarted while progress
streams, and the ASGI server killed and restarted while the agents are connected. A
worker that exits on its own is started again, as docker-compose's restart policy does in
production, and listed in the figures (`exits_on_their_own`); the run fails unless each such
exit is a known upstream defect (harness.DEFECTS, identified by the worker's log line) that
followed the fault that causes it, at most once per worker and fault. Every process's log
is read at the end (tests/stack.py): anything but what the injected faults explain fails.

At the end, whatever happened: every job is settled, as completed work or as cleanly
failed work with its reason; no resumed attempt starts its step counter from 0; each job
closed on the chain exactly once with the payouts the database records; no persisted
progress event is lost (each job's MetricPoint seq is gap-free, and every message in the
agents' outboxes was applied). The counts and the detection-to-resume times go to
test-results/chaos.json (docs/BENCHMARKS.md, "Chaos").

Size: CHAOS_JOBS, CHAOS_NODES, CHAOS_AGENT_KILLS, CHAOS_EPOCHS, CHAOS_TIMEOUT_S; the
defaults are the short form run by `make test`; `make chaos` runs the long form.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from collections import Counter
from dataclasses import asdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.chain import deploy
from marketplace.models import (
    Assignment,
    ChainContract,
    ChainTransaction,
    Checkpoint,
    Job,
    JobEvent,
    MetricPoint,
    Node,
    Organization,
    Payout,
    Settlement,
)
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create

from ..browser_support import ROOT
from ..chain_node import dev_node
from ..factories import UserFactory
from ..stack import wait_for
from .harness import DEFECTS, ChaosStack, Exit, Injection, RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.chaos]

JOBS = int(os.environ.get("CHAOS_JOBS", "2"))
NODES = int(os.environ.get("CHAOS_NODES", "3"))
AGENT_KILLS = int(os.environ.get("CHAOS_AGENT_KILLS", "1"))
EPOCHS = int(os.environ.get("CHAOS_EPOCHS", "12"))
TIMEOUT_S = float(os.environ.get("CHAOS_TIMEOUT_S", "600"))
# Above the agents' reconnect backoff across an ASGI restart (1+2+4+8 s of retries, plus
# daphne's own start): at 15 s a loaded machine saw a node written off that nobody killed.
HEARTBEAT_TIMEOUT_S = 30
VANISH_AT = 0.5  # the vanishing node disappears half-way through its job
RESULTS = ROOT / "test-results" / "chaos.json"
S, A = Job.Status, Assignment.Status
FINAL = {S.SETTLED, S.REFUNDED}


@pytest.fixture(scope="module")
def node():
    with dev_node() as url:
        yield url


@pytest.fixture
def on_node(node, settings):
    settings.CHAIN_RPC_URL = node
    settings.ESCROW_ENABLED = True
    settings.CHAIN_CONFIRMATIONS = 1
    return node


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def provider_nodes(count: int) -> tuple[Organization, list[tuple[Node, str]]]:
    provider = organization_create(name="Chaos CPU Lab", kind=Organization.Kind.PROVIDER)
    nodes = []
    for i in range(count):
        node, token = node_create(provider=provider, spec=NodeSpec(
            name=f"chaos-{i}", gpu_model="cpu", gpu_count=1, gpu_memory_gb=None, cpu_cores=2,
            ram_gb=8, disk_gb=20, region="EU-DE"))
        offer_create(provider=provider, node=node,
                     spec=OfferSpec(gpus_offered=1, price_per_gpu_hour=Decimal("3.00")))
        nodes.append((node, token))
    return provider, nodes


def job_body(n: int) -> dict:
    return {"name": f"Chaos {n}", "template": "image-classifier", "dataset": "sample:digits",
            "params": {"epochs": EPOCHS, "checkpoint_every": 50, "batch_size": 32},
            "nodes": 1, "gpus_per_node": 1, "gpu_models": ["cpu"],
            "max_price_per_gpu_hour": "5.00", "budget": "10.00",
            "deadline": (timezone.now() + timedelta(days=1)).isoformat()}


def running_on(node: Node) -> list[int]:
    return list(Assignment.objects.filter(node=node, status__in=Assignment.ACTIVE)
                .values_list("pk", flat=True))


def gave_up(node: Node, injection: Injection) -> bool:
    """The platform has written off what the dead node ran (so a restart is a new machine
    to it, not the old one coming back mid-job)."""
    if injection.assignments:
        return not Assignment.objects.filter(pk__in=injection.assignments,
                                             status__in=Assignment.ACTIVE).exists()
    return Node.objects.get(pk=node.pk).status != Node.Status.ONLINE


def reboot_dead(stack: ChaosStack, names: list[str], nodes: list[tuple[Node, str]],
                dead: dict[str, Injection], reboot_at: dict[str, float]) -> None:
    """Start again (with no faults) each killed machine that is due: at its `reboot_at`
    (back within the heartbeat timeout), or once the platform has written its work off."""
    for name, injection in list(dead.items()):
        i = names.index(name)
        quick = name in reboot_at and time.monotonic() >= reboot_at[name]
        if quick or (name not in reboot_at and gave_up(nodes[i][0], injection)):
            reboot_at.pop(name, None)
            injection.kind += "_rebooted_at_once" if quick else ""
            stack.chaos_agent(name, nodes[i][1])
            del dead[name]


class Scenario:
    """Drives the injections from what the database says, one poll at a time."""

    def __init__(self, stack: ChaosStack, redis_server: RedisServer, nodes: list[tuple[Node, str]],
                 jobs: list[int]):
        self.stack, self.redis, self.nodes, self.jobs = stack, redis_server, nodes, jobs
        self.names = [f"node-{i}" for i in range(len(nodes))]
        self.vanisher = self.names[0]
        self.dead: dict[str, Injection] = {}  # agent name → the injection that took it down
        self.reboot_at: dict[str, float] = {}  # agents that come back at once, not after the timeout
        self.hit_jobs: set[int] = set()
        self.done: set[str] = set()
        self.agent_kills = 0
        self.last_kill = 0.0
        self.redis_restarted_at = 0.0

    def start_agents(self) -> None:
        for name, (_, token) in zip(self.names, self.nodes, strict=True):
            faults = f"vanish={VANISH_AT}" if name == self.vanisher else ""
            self.stack.chaos_agent(name, token, faults=faults)

    def jobs_in(self, *statuses: str) -> list[Job]:
        return list(Job.objects.filter(pk__in=self.jobs, status__in=statuses))

    def poll(self) -> None:
        st, now = self.stack, time.monotonic()
        st.supervise()
        if "dispatch" not in self.done and Assignment.objects.filter(
                job_id__in=self.jobs, status__in=(A.PENDING, A.DISPATCHED)).exists():
            st.restart_worker("celery", "worker_sigkill_dispatch")
            self.done.add("dispatch")
        if "redis" not in self.done and any(j.metrics.count() >= 5 for j in self.jobs_in(S.RUNNING)):
            self.redis.restart()
            st.injections.append(Injection("redis_restart", time.time(), self.redis.url))
            self.done.add("redis")
            self.redis_restarted_at = now
        if "daphne" not in self.done and "redis" in self.done and now - self.redis_restarted_at > 5:
            st.restart_daphne()
            self.done.add("daphne")
        if "settlement" not in self.done and ChainTransaction.objects.filter(purpose="settle").exists():
            st.restart_worker("chain", "worker_sigkill_settlement")
            self.done.add("settlement")
        self._vanished()
        if self.agent_kills < AGENT_KILLS and now - self.last_kill > 10:
            self._kill_an_agent()
        self._reboot_dead()

    def _vanished(self) -> None:
        proc = self.stack.agent_procs[self.vanisher]
        if self.vanisher in self.dead or "vanish" in self.done or proc.poll() is None:
            return
        assert proc.returncode == 75, f"the vanishing agent exited with {proc.returncode}"
        node = self.nodes[0][0]
        injection = Injection("agent_vanish", time.time(), self.vanisher, running_on(node))
        self.stack.injections.append(injection)
        self.stack.reap_training(self.vanisher)
        self.dead[self.vanisher] = injection
        self.hit_jobs.update(Assignment.objects.filter(pk__in=injection.assignments)
                             .values_list("job_id", flat=True))
        self.done.add("vanish")

    def _kill_an_agent(self) -> None:
        """SIGKILL the machine of a running job that has a committed checkpoint (so that its
        resume must not start from 0) and that no earlier injection hit."""
        for name, (node, _) in zip(self.names, self.nodes, strict=True):
            if name in self.dead or (name == self.vanisher and "vanish" not in self.done):
                continue
            active = Assignment.objects.filter(node=node, status=A.RUNNING).exclude(
                job_id__in=self.hit_jobs).first()
            if active and Checkpoint.objects.filter(assignment=active, committed_at__isnull=False).exists():
                self.stack.kill_agent(name, running=running_on(node))
                self.dead[name] = self.stack.injections[-1]
                if self.agent_kills % 2 == 0:  # every other machine reboots within the timeout
                    self.reboot_at[name] = time.monotonic() + 2
                self.hit_jobs.add(active.job_id)
                self.agent_kills += 1
                self.last_kill = time.monotonic()
                return

    def _reboot_dead(self) -> None:
        reboot_dead(self.stack, self.names, self.nodes, self.dead, self.reboot_at)

    def finished(self) -> bool:
        return (not self.dead and len(self.jobs_in(*FINAL)) == len(self.jobs)
                and not Settlement.objects.filter(job_id__in=self.jobs).exclude(status="settled").exists())


# --- what is checked at the end -----------------------------------------------------
def closes_on_chain() -> Counter:
    """Each job key's JobSettled and JobRefunded events (more than one: paid twice)."""
    escrow = deploy.escrow_contract()
    since = ChainContract.objects.get(name="escrow").block_number
    keys: Counter = Counter()
    for event in (escrow.events.JobSettled, escrow.events.JobRefunded):
        for log in event().get_logs(from_block=since):
            keys["0x" + bytes(log["args"]["jobId"]).hex()] += 1
    return keys


def restarts_from_zero(job: Job) -> list[str]:
    """A later attempt that had a committed checkpoint to resume from but did not, or whose
    first reported step lies before its resume step."""
    found = []
    for a in job.assignments.filter(attempt__gt=1, node_rank=0).order_by("attempt"):
        steps = list(MetricPoint.objects.filter(assignment=a).order_by("seq").values_list("step", flat=True))
        earlier = Checkpoint.objects.filter(job=job, assignment__attempt__lt=a.attempt,
                                            committed_at__lt=a.created_at).exists()
        if earlier and a.resume_step is None:
            found.append(f"job {job.pk} attempt {a.attempt}: not resumed from its checkpoint")
        if steps and a.resume_step is not None and min(steps) < a.resume_step:
            found.append(f"job {job.pk} attempt {a.attempt}: step {min(steps)} < resume step {a.resume_step}")
        if steps and earlier and min(steps) == 0:
            found.append(f"job {job.pk} attempt {a.attempt}: restarted from step 0")
    return found


def metric_gaps(job: Job) -> int:
    seqs = list(job.metrics.order_by("seq").values_list("seq", flat=True))
    return len(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))


def outbox_unapplied(workdir: Path) -> tuple[int, int]:
    """(messages still unacknowledged, sequence numbers the platform has not applied) in an
    agent's on-disk outbox."""
    path = workdir / "outbox.sqlite3"
    if not path.exists():
        return 0, 0
    with sqlite3.connect(path) as db:
        pending = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        seqs = dict(db.execute("SELECT assignment, next FROM seqs").fetchall())
    applied = dict(Assignment.objects.filter(pk__in=seqs).values_list("pk", "last_seq"))
    return pending, sum(max(0, last - applied.get(a, 0)) for a, last in seqs.items())


def detection_to_resume(injections: list[Injection]) -> list[dict]:
    rows = []
    for inj in injections:
        for a in Assignment.objects.filter(pk__in=inj.assignments, status=A.LOST):
            nxt = Assignment.objects.filter(job_id=a.job_id, attempt=a.attempt + 1, node_rank=0).first()
            first = (MetricPoint.objects.filter(assignment=nxt).order_by("seq").first() if nxt else None)
            row = {"job": a.job_id, "injection": inj.kind,
                   "detected_after_kill_s": round(a.finished_at.timestamp() - inj.at, 1)}
            if nxt is not None:  # re-placed at once, or only when a node came free
                row["placed_after_detection_s"] = round((nxt.created_at - a.finished_at).total_seconds(), 1)
            if first is not None:
                row["resumed_step"] = first.step
                row["resumed_after_placement_s"] = round((first.at - nxt.created_at).total_seconds(), 1)
                row["resumed_after_detection_s"] = round((first.at - a.finished_at).total_seconds(), 1)
                if "rebooted_at_once" not in inj.kind:  # found by the heartbeat timeout
                    row["resumed_after_heartbeat_timeout_s"] = round(
                        first.at.timestamp() - (inj.at + HEARTBEAT_TIMEOUT_S), 1)
            rows.append(row)
    return rows


def unexplained_exits(exits: list[Exit], injections: list[Injection]) -> list[str]:
    """Workers that exited on their own other than through a known defect after the fault
    that causes it, or more often than once per worker and such fault."""
    found, seen = [], Counter()
    for e in exits:
        if e.defect is None:
            found.append(f"{e.process} exited with {e.returncode} for no known reason: {e.why}")
            continue
        cause = DEFECTS[e.defect][1]
        faults = sum(i.kind == cause and i.at <= e.at for i in injections)
        worker = e.process.split("-")[0]  # celery, celery-2, …: one worker, restarted
        seen[worker, e.defect] += 1
        if seen[worker, e.defect] > faults:
            found.append(f"{e.process} exited with {e.defect} {seen[worker, e.defect]} time(s) "
                         f"after {faults} {cause}(s)")
    return found


def allow_injected_faults(stack: ChaosStack) -> None:
    """What the injected faults make the platform's processes log, and nothing else. Killed
    processes log nothing; the Redis restart is what shows: while the suite's own Redis
    server is down (its port refuses) and as it closes the open connections, Celery, beat,
    the channel layer and the ingest's broadcasts log each failed attempt and retry."""
    port = stack.redis_url.rsplit(":", 1)[1].split("/")[0]
    stack.allow(r"Unrecoverable error: AttributeError\(.*'hostname'",
                why="celery-5.7.0-hostname after redis_restart, counted by unexplained_exits")
    stack.allow(rf"127\.0\.0\.1[:', ]+{port}\b", why="redis_restart: connections refused while it is down")
    stack.allow(r"ConnectionError: Connection closed by server", why="redis_restart: its connections closed")
    stack.allow(r"RecoverableConnectionError: channel disconnected", why="redis_restart: channel lost")


def test_jobs_survive_killed_agents_workers_redis_and_the_asgi_server(on_node, own_redis, tmp_path):
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    token = Token.objects.create(user=UserFactory(username="alice", organization=org)).key
    provider, nodes = provider_nodes(NODES)
    out = io.StringIO()
    call_command("chain_deploy", "--dev-wallets", "--mint", "1000", stdout=out)
    stack = ChaosStack(tmp_path, redis_url=own_redis.url, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, env={
        "ESCROW_ENABLED": "1", "CHAIN_RPC_URL": on_node, "SETTLEMENT_INTERVAL_S": "2",
        "CHAIN_RESEND_AFTER_S": "1", "JOB_MAX_ATTEMPTS": "5"})
    allow_injected_faults(stack)
    began = time.monotonic()
    stack.start()
    try:
        scenario = Scenario(stack, own_redis, nodes, [])
        scenario.start_agents()
        wait_for(lambda: Node.objects.filter(status=Node.Status.ONLINE).count() == NODES, timeout=120,
                 what="every agent to connect")
        jobs = scenario.jobs
        for n in range(JOBS):
            code, job = stack.http("POST", "/api/v1/jobs/", token=token, body=job_body(n))
            assert code == 201, job
            code, funded = stack.http("POST", f"/api/v1/jobs/{job['id']}/fund/", token=token, body={})
            assert code == 200, funded
            jobs.append(job["id"])
        deadline = began + TIMEOUT_S
        while not scenario.finished():
            assert time.monotonic() < deadline, (
                f"not finished after {TIMEOUT_S:.0f} s: "
                f"{list(Job.objects.filter(pk__in=jobs).values_list('pk', 'status'))}, "
                f"injected {[i.kind for i in stack.injections]}, exited on their own {stack.exits}")
            scenario.poll()
            time.sleep(0.25)
        time.sleep(3)  # the last acknowledgements reach the agents' outboxes
    finally:
        stack.stop()
    wall = time.monotonic() - began

    records = list(Job.objects.filter(pk__in=jobs).order_by("pk"))
    failed = {j.pk: JobEvent.objects.filter(job=j, to_status=S.FAILED).first() for j in records}
    closes = closes_on_chain()
    keys = {j.pk: j.escrow.key for j in records}
    outboxes = [outbox_unapplied(tmp_path / name) for name in scenario.names]
    figures = {
        "config": {"jobs": JOBS, "nodes": NODES, "agent_kills": AGENT_KILLS, "epochs": EPOCHS,
                   "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S, "vanish_at": VANISH_AT},
        "injections": dict(Counter(i.kind for i in stack.injections)),
        "kills_injected": sum(i.kind != "redis_restart" for i in stack.injections),
        "jobs_completed": JobEvent.objects.filter(job__in=records, to_status=S.COMPLETED).count(),
        "jobs_failed": [{"job": pk, "reason": e.reason, "message": e.message}
                        for pk, e in failed.items() if e is not None],
        "final_status": dict(Counter(j.status for j in records)),
        "node_losses": JobEvent.objects.filter(job__in=records, reason="node_lost").count(),
        "double_settlements": sum(max(0, closes[k] - 1) for k in keys.values()),
        "unsettled_on_chain": sum(closes[k] == 0 for k in keys.values()),
        "lost_events": sum(metric_gaps(j) for j in records) + sum(u for _, u in outboxes),
        "unacknowledged_outbox_messages": sum(p for p, _ in outboxes),
        "restarts_from_zero": [r for j in records for r in restarts_from_zero(j)],
        "detection_to_resume": detection_to_resume(stack.injections),
        "exits_on_their_own": [asdict(e) for e in stack.exits],  # restarted, as compose would
        "unexplained_exits": unexplained_exits(stack.exits, stack.injections),
        "wall_s": round(wall, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")

    # A worker restarted only after a known defect that an injected fault explains.
    assert figures["unexplained_exits"] == [], figures["exits_on_their_own"]
    # Every fault was injected.
    assert {"worker_sigkill_dispatch", "worker_sigkill_settlement", "redis_restart",
            "daphne_sigkill", "agent_vanish"} <= set(figures["injections"]), figures["injections"]
    assert sum(n for kind, n in figures["injections"].items()
               if kind.startswith("agent_sigkill")) == AGENT_KILLS, figures["injections"]
    # Every job ended settled on chain: completed work, or failed work with its reason.
    for job in records:
        assert job.status in FINAL, (job.pk, job.status)
        assert failed[job.pk] is None or (failed[job.pk].reason and failed[job.pk].message)
        assert failed[job.pk] is not None or JobEvent.objects.filter(job=job, to_status=S.COMPLETED).exists()
    assert figures["node_losses"] >= 1 + AGENT_KILLS, figures
    assert figures["restarts_from_zero"] == []
    # Closed once each on the chain; what the chain owes is what the database paid.
    assert figures["double_settlements"] == 0 and figures["unsettled_on_chain"] == 0, dict(closes)
    assert Settlement.objects.filter(job__in=records).count() == len(records)
    escrow = deploy.escrow_contract()
    payout = provider.wallets.get(is_payout=True).address
    paid = sum(Payout.objects.filter(settlement__job__in=records).values_list("amount", flat=True),
               Decimal(0))
    assert escrow.functions.owed(payout).call() == int(paid * 10**6)
    fees = sum(Settlement.objects.filter(job__in=records).values_list("fee", flat=True), Decimal(0))
    assert escrow.functions.owed(deploy.treasury_address()).call() == int(fees * 10**6)
    # Nothing persisted was lost, and every message the agents wrote down was applied.
    assert figures["lost_events"] == 0 and figures["unacknowledged_outbox_messages"] == 0, outboxes
