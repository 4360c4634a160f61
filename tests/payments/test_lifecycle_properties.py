"""Random sequences of a job's life and its money (Hypothesis stateful testing) through the
platform's own services, on PostgreSQL and the in-process chain (the payment tests'
eth-tester deployment, tests/payments/conftest.py): funding (job_fund and the indexer),
placement (job_place), starts, progress and checkpoints (the agent messages, agent_data),
node loss (node_lost), resume (placement again, from the last committed checkpoint),
cancellation (job_cancel), verification passing or failing (verification_run) and
settlement (settlements_prepare, settlement_batch_send, the indexer).

After every step:
- every status change on any job's timeline is a legal transition of job_states;
- the escrow's token balance on chain is exactly the deposits it holds for funded jobs plus
  what it owes (credits not withdrawn), and the chain agrees with the database job by job;
- nobody is paid more than was funded: a settled job's payouts, fee and refund add up to its
  deposit, and each account's credit on chain is what the settlements in the database say;
- the consumer is charged only for verified work: an attempt whose verification failed
  costs nothing, and no job is charged more than its surviving assignments ran.

The replay inside verification (torch, workers/training/replay.py, tested on its own
against real torchrun runs) is the one part replaced here: the rule decides whether the
work passes; what the platform does with the verdict is the real code.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import F
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from marketplace import job_states
from marketplace.chain import deploy, indexer
from marketplace.models import (
    Assignment,
    Checkpoint,
    Dispute,
    Escrow,
    Job,
    JobEvent,
    Node,
    Settlement,
    VerificationReport,
    Wallet,
)
from marketplace.services import agent_ingest, execution, payments, placement, verification
from marketplace.services.jobs import job_cancel
from marketplace.services.nodes import node_set_presence

from ..contracts.conftest import Chain as ContractsChain
from ..contracts.support import FUNDED, REFUNDED, SETTLED
from ..factories import NodeFactory, OfferFactory
from .support import committed, funded_job, units

pytestmark = pytest.mark.django_db
S, A, E = Job.Status, Assignment.Status, Escrow.Status
# Sized for CI (well under a minute on 2 busy cores); LIFECYCLE_EXAMPLES=200 hunts longer.
EXAMPLES = int(os.environ.get("LIFECYCLE_EXAMPLES", "6"))
MAX_JOBS = 3  # unsettled at once: enough to share nodes and batches, few enough to go deep
RUNNING_ONES = (S.MATCHING, S.RUNNING)


class Storage:
    """Reads the escrow's and the token's state straight from py-evm's storage, with the
    escrow property test's slot arithmetic (tests/contracts): a fraction of a millisecond a
    value, where an eth_call costs tens, and the invariants read dozens after every step."""

    storage = ContractsChain.storage

    def __init__(self, chain):
        self.token, self.escrow = chain.token, chain.escrow
        self.tester = chain.w3.provider.ethereum_tester

    def state(self):
        return self.tester.backend.chain.get_vm().state

    def escrow_of(self, key: str, state) -> tuple[int, int]:
        """(state, amount) of a job's deposit: JobEscrow keeps (consumer | amount << 160) and
        (deadline | state << 64); an emptied deposit under a stored Funded reads Settled."""
        deposit = self.storage(self.escrow, "_escrows", key, state=state)
        terms = self.storage(self.escrow, "_escrows", key, member=1, state=state)
        stored = (terms >> 64) & 0xFF
        return (SETTLED if stored == FUNDED and deposit == 0 else stored), deposit >> 160

    def owed(self, account: str, state) -> int:
        return self.storage(self.escrow, "owed", account, state=state)

    def balance(self, account: str, state) -> int:
        return self.storage(self.token, "_balances", account, state=state)


class Lifecycle(RuleBasedStateMachine):
    """Bound to the test's chain, organizations and nodes by the test below."""

    chain: object
    consumers: list
    nodes: list[Node]
    verdicts: dict  # report id → True (passes) / False, read by the replaced replay
    seen_events: list[int]  # the highest JobEvent id already checked (shared across examples)

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[int] = []

    # --- helpers -------------------------------------------------------------------------
    def job(self, i: int) -> Job:
        return Job.objects.get(pk=self.jobs[i % len(self.jobs)])

    def active(self, job: Job) -> list[Assignment]:
        return list(job.assignments.filter(attempt=job.attempt, status__in=Assignment.ACTIVE))

    def say(self, a: Assignment, kind: str, **fields) -> None:
        """What the node's agent would send about the assignment, next in its sequence."""
        a.refresh_from_db()
        with committed():
            assert agent_ingest.agent_data(node=a.node, message={
                "type": kind, "id": f"m-{a.pk}-{a.last_seq + 1}", "assignment": a.pk,
                "seq": a.last_seq + 1, **fields}) == "applied"

    def heartbeats(self) -> None:
        """Every node's agent is connected (a lost node's machine has come back)."""
        for node in self.nodes:
            node_set_presence(node_id=node.pk, online=True, heartbeat_at=timezone.now())

    def with_status(self, *statuses: str) -> list[int]:
        return [n for n, pk in enumerate(self.jobs) if Job.objects.get(pk=pk).status in statuses]

    # --- rules ---------------------------------------------------------------------------
    @precondition(lambda self: len(self.jobs) - len(self.with_status(S.SETTLED, S.REFUNDED)) < MAX_JOBS)
    @rule(consumer=st.integers(0, 1), budget=st.sampled_from(["0.50", "3", "40"]))
    def fund(self, consumer, budget):
        job = funded_job(self.consumers[consumer], budget=budget)  # job_fund, then the indexer
        self.jobs.append(job.pk)

    @precondition(lambda self: self.with_status(S.FUNDED, S.INTERRUPTED, S.MATCHING))
    @rule(i=st.integers(0, MAX_JOBS - 1))
    def place(self, i):
        """Matching (again, after a loss or a failed verification: the resume)."""
        waiting = self.with_status(S.FUNDED, S.INTERRUPTED, S.MATCHING)
        job = self.job(waiting[i % len(waiting)])
        self.heartbeats()
        with committed():
            placed = placement.job_place(job_id=job.pk)
            for assignment_id in execution.dispatchable(placed):
                execution.assignment_dispatch(assignment_id=assignment_id)
        job.refresh_from_db()
        assert job.status == S.MATCHING

    @precondition(lambda self: any(
        a.status == A.DISPATCHED for pk in self.jobs for a in Assignment.objects.filter(job_id=pk)))
    @rule(i=st.integers(0, MAX_JOBS - 1))
    def start(self, i):
        dispatched = list(Assignment.objects.filter(job_id__in=self.jobs, status=A.DISPATCHED))
        a = dispatched[i % len(dispatched)]
        self.say(a, "assignment.accepted", rdzv={"host": "127.0.0.1", "port": 29500})
        assert Job.objects.get(pk=a.job_id).status == S.RUNNING

    @precondition(lambda self: self.with_status(S.RUNNING))
    @rule(i=st.integers(0, MAX_JOBS - 1), minutes=st.integers(1, 90), checkpoint=st.booleans())
    def work(self, i, minutes, checkpoint):
        """Time passes on a running job (everything it recorded moves back by `minutes`), and
        the node may commit a checkpoint (uploaded, then committed by its message)."""
        job = self.job(self.with_status(S.RUNNING)[i % len(self.with_status(S.RUNNING))])
        shift = timedelta(minutes=minutes)
        running = job.assignments.filter(status__in=Assignment.ACTIVE)
        running.update(started_at=F("started_at") - shift)
        Checkpoint.objects.filter(assignment__in=running).update(
            created_at=F("created_at") - shift, committed_at=F("committed_at") - shift)
        if checkpoint:
            (rank0,) = [a for a in self.active(job) if a.node_rank == 0]
            step = (rank0.checkpoints.order_by("-step").values_list("step", flat=True).first()
                    or rank0.resume_step or 0) + 10
            Checkpoint.objects.create(job=job, assignment=rank0, step=step, sha256=f"{step:064x}",
                                      size_bytes=1, file=f"checkpoints/property-{rank0.pk}-{step}.pt",
                                      status=Checkpoint.Status.VERIFIED)  # checked and replayed
            self.say(rank0, "checkpoint", step=step, sha256=f"{step:064x}", bytes=1)

    @precondition(lambda self: self.with_status(*RUNNING_ONES))
    @rule(i=st.integers(0, MAX_JOBS - 1))
    def node_loss(self, i):
        jobs = [self.job(n) for n in self.with_status(*RUNNING_ONES)]
        placed = [a for job in jobs for a in self.active(job)]
        if not placed:
            return  # waiting for a machine: nothing to lose
        a = placed[i % len(placed)]
        with committed():
            execution.node_lost(node_id=a.node_id)
        a.refresh_from_db()
        assert a.status == A.LOST
        # Lost before it started, a job stays matching and is placed again.
        assert Job.objects.get(pk=a.job_id).status in (S.INTERRUPTED, S.FAILED, S.MATCHING)

    @precondition(lambda self: self.with_status(S.RUNNING))
    @rule(i=st.integers(0, MAX_JOBS - 1))
    def finish(self, i):
        job = self.job(self.with_status(S.RUNNING)[i % len(self.with_status(S.RUNNING))])
        # Rank 0's agent uploads the model before it reports the end (agent_http stores its
        # SHA-256); the ingest refuses a `finished` whose hash is not one.
        Job.objects.filter(pk=job.pk).update(artifact_sha256=hashlib.sha256(b"model %d" % job.pk).hexdigest())
        job.refresh_from_db()
        for a in sorted(self.active(job), key=lambda a: -a.node_rank):
            self.say(a, "assignment.finished", status="succeeded", metric="accuracy", value=0.9,
                     step=100, artifact_sha256=job.artifact_sha256, param_digests=["d"])
        assert Job.objects.get(pk=job.pk).status == S.VERIFYING

    @precondition(lambda self: self.with_status(S.VERIFYING))
    @rule(i=st.integers(0, MAX_JOBS - 1), passes=st.booleans())
    def verify(self, i, passes):
        job = self.job(self.with_status(S.VERIFYING)[i % len(self.with_status(S.VERIFYING))])
        report = VerificationReport.objects.get(job=job, attempt=job.attempt)
        self.verdicts[report.pk] = passes
        with committed():
            verification.verification_run(report_id=report.pk, check=None)  # _check is replaced
        job.refresh_from_db()
        assert job.status == (S.COMPLETED if passes else S.INTERRUPTED) or (
            not passes and job.status == S.FAILED)

    @precondition(lambda self: self.with_status(*job_states.CANCELLABLE))
    @rule(i=st.integers(0, MAX_JOBS - 1))
    def cancel(self, i):
        cancellable = self.with_status(*job_states.CANCELLABLE)
        job = self.job(cancellable[i % len(cancellable)])
        with committed():
            job_cancel(job=job)
        assert Job.objects.get(pk=job.pk).status == S.CANCELLED
        assert not job.assignments.filter(status__in=Assignment.ACTIVE).exists()

    @precondition(lambda self: self.with_status(*payments.SETTLE_FROM))
    @rule(twice=st.booleans())
    def settle(self, twice):
        """The periodic settlement pass: meter, pay in one batch, index. `twice`: the pass
        runs again at once (a retried task), which must change nothing."""
        for _ in range(2 if twice else 1):
            payments.settlements_prepare()
            with committed():
                payments.settlement_batch_send()
            indexer.index_events()
        for pk in self.jobs:
            job = Job.objects.get(pk=pk)
            if job.status in payments.SETTLE_FROM:
                assert not Escrow.objects.filter(job=job, status=E.FUNDED).exists(), job.status

    # --- invariants ----------------------------------------------------------------------
    @invariant()
    def only_legal_transitions(self):
        for event in JobEvent.objects.filter(pk__gt=self.seen_events[0]).exclude(to_status="").order_by("pk"):
            assert job_states.can_transition(event.from_status, event.to_status), (
                f"job {event.job_id}: {event.from_status} → {event.to_status} ({event.reason})")
            self.seen_events[0] = event.pk

    @invariant()
    def the_escrow_holds_deposits_plus_credits(self):
        c = Storage(self.chain)
        evm = c.state()
        held = 0
        for e in Escrow.objects.exclude(status__in=(E.UNFUNDED, E.FUNDING)):
            state, amount = c.escrow_of(e.key, evm)
            if e.status == E.FUNDED:
                assert (state, amount) == (FUNDED, units(e.amount)), (e.job_id, state, amount)
                held += amount
            else:
                assert state in (SETTLED, REFUNDED) and amount == 0, (e.job_id, e.status, state)
        accounts = set(Wallet.objects.values_list("address", flat=True)) | {deploy.treasury_address()}
        owed = {a: c.owed(a, evm) for a in accounts}
        assert c.balance(c.escrow.address, evm) == held + sum(owed.values())
        self.no_one_is_paid_more_than_funded(owed)

    def no_one_is_paid_more_than_funded(self, owed: dict[str, int]) -> None:
        settlements = list(Settlement.objects.filter(status="settled").select_related("job__escrow"))
        credit: dict[str, int] = dict.fromkeys(owed, 0)
        for s in settlements:
            deposit = s.job.escrow.amount
            payouts = list(s.payouts.all())
            assert sum(p.amount for p in payouts) + s.fee == s.charged
            assert s.charged + s.refunded == deposit, (s.job_id, s.charged, s.refunded, deposit)
            for p in payouts:
                credit[p.address] = credit.get(p.address, 0) + units(p.amount)
            credit[deploy.treasury_address()] += units(s.fee)
            credit[s.job.escrow.consumer_address] = (credit.get(s.job.escrow.consumer_address, 0)
                                                     + units(s.refunded))
        assert owed == credit
        closed = Escrow.objects.filter(status__in=(E.SETTLED, E.REFUNDED))
        assert sum(owed.values()) <= sum(units(e.amount) for e in closed)

    @invariant()
    def the_consumer_pays_only_for_verified_work(self):
        for s in Settlement.objects.filter(job_id__in=self.jobs):
            voided = set(Dispute.objects.filter(job_id=s.job_id)
                         .values_list("assignment__attempt", flat=True))
            voided |= set(VerificationReport.objects.filter(job_id=s.job_id, status="failed")
                          .values_list("attempt", flat=True))
            for line in s.statement:
                if line["attempt"] in voided:
                    assert Decimal(line["amount"]) == 0, line
            ran = Decimal(0)  # what the surviving assignments ran, at their prices: an upper bound
            for a in Assignment.objects.filter(job_id=s.job_id, started_at__isnull=False,
                                               finished_at__isnull=False).exclude(attempt__in=voided):
                hours = Decimal((a.finished_at - a.started_at).total_seconds()) / 3600
                ran += a.price_per_gpu_hour * a.gpus * hours
            assert s.charged <= ran + Decimal("0.000001"), (s.job_id, s.charged, ran)
            if JobEvent.objects.filter(job_id=s.job_id, to_status=S.COMPLETED).exists():
                assert VerificationReport.objects.filter(job_id=s.job_id, status="passed").exists()


@pytest.fixture
def lifecycle(wallets, healthcare, energy, provider_org, other_provider_org, monkeypatch):
    nodes = []
    for org in (provider_org, provider_org, other_provider_org, other_provider_org, provider_org):
        node = NodeFactory(provider=org, gpu_count=2)
        OfferFactory(node=node, price_per_gpu_hour=Decimal("1.20" if org == provider_org else "0.80"))
        nodes.append(node)
    verdicts: dict[int, bool] = {}

    def replay(job, attempt, rng=None, *, check):  # the torch replay, replaced: the rule gives the verdict
        report = VerificationReport.objects.get(job=job, attempt=attempt)
        out = verification.Outcome(train_steps=100, replay_steps=10, metric_measured=0.9)
        if not verdicts[report.pk]:
            out.findings.append(verification.Finding(Dispute.Reason.REPLAY_MISMATCH,
                                                     "Replaying steps 0..10 gives other parameters."))
        return out

    monkeypatch.setattr(verification, "_check", replay)
    return type("BoundLifecycle", (Lifecycle,), {
        "chain": wallets, "consumers": [healthcare, energy], "nodes": nodes, "verdicts": verdicts,
        "seen_events": [0]})


def test_random_job_lifecycles_keep_the_money_and_the_states_right(lifecycle):
    # First a fixed sequence through the same rules and invariants, so that every run sees a
    # node lost after a checkpoint and the job resumed from it, a verification that fails
    # (the work voided) and one that passes, a cancellation, and both settled on chain.
    m = lifecycle()
    steps = [lambda: m.fund(0, "40"), lambda: m.place(0), lambda: m.start(0),
             lambda: m.work(0, 30, True), lambda: m.node_loss(0), lambda: m.place(0), lambda: m.start(0),
             lambda: m.work(0, 20, True), lambda: m.finish(0), lambda: m.verify(0, False),
             lambda: m.place(0), lambda: m.start(0), lambda: m.work(0, 10, False), lambda: m.finish(0),
             lambda: m.verify(0, True), lambda: m.fund(1, "3"), lambda: m.place(1), lambda: m.start(0),
             lambda: m.work(0, 15, False), lambda: m.cancel(0), lambda: m.settle(True)]
    for step in steps:
        step()
        m.only_legal_transitions()
        m.the_escrow_holds_deposits_plus_credits()
        m.the_consumer_pays_only_for_verified_work()
    first, second = (Job.objects.get(pk=pk) for pk in m.jobs)
    assert (first.status, second.status) == (S.SETTLED, S.SETTLED)
    assert first.assignments.order_by("attempt")[1].resume_step == 10  # resumed, not from 0
    lines = Settlement.objects.get(job=first).statement
    assert [Decimal(x["amount"]) > 0 for x in lines] == [True, False, True]  # attempt 2 voided
    assert Settlement.objects.get(job=second).charged > 0  # cancelled: the work done is paid
    run_state_machine_as_test(lifecycle, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=15, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
