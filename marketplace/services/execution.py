"""Running a placed job, its lifecycle: dispatching its parts, what an agent's hello,
heartbeat, acceptance, rejection and ending do to them and to the job, a node lost, a
DiLoCo rank replaced. The wire format is services/agent_protocol.py, the claims that move
an assignment on exactly once services/assignments.py, and the ingest that applies agents'
numbered messages services/agent_ingest.py.

The database is the source of truth. Messages to agents are pushed through the channel
layer after commit, and re-sent from the database on every hello and heartbeat, so a
lost push delays work but never loses it.

About 500 lines, over the ~400 of the others: every transition of a job's parts is here,
so that one reading shows how a job moves (the handlers share _interrupt, lock_job_and_parts and
the DiLoCo rules).
"""

import json
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .. import catalogue, job_states, task_names
from ..errors import NotFound
from ..models import Assignment, Checkpoint, Job, Node
from ..selectors.execution import is_diloco
from . import checkpoint_checks, claims, enqueue, placement, verification
from .agent_protocol import (
    AgentRefused,
    agent_message,
    assignment_ids,
    cancel_message,
    loose_float,
    loose_int,
    pause_message,
    send_to_node,
)
from .assignments import (
    assignment_claim_dispatch,
    assignment_end,
    job_stop_assignments,
    lock_job_and_parts,
)
from .budget import job_paused_by_nodes
from .bundles import bundle_spec
from .liveness import assignment_steps_record
from .nodes import node_set_presence
from .provider_runtime import assignment_peers, node_network_report, node_runtime_report

log = logging.getLogger(__name__)
S = Job.Status
A = Assignment.Status
TOKEN_SALT = "computemesh.assignment"


# --- messages to agents ----------------------------------------------------------
def job_secret(job: Job) -> str:
    """The secret a job's nodes authenticate each other with (the DiLoCo exchange's HMAC key,
    the rendezvous store's namespace): derived from SECRET_KEY and the job, so nothing new is
    stored, and sent only in `assignment.start` to the job's own agents; no API or page shows
    it. Providers of other jobs, and strangers on the network, cannot compute it."""
    return salted_hmac("computemesh.job-secret", str(job.pk), algorithm="sha256").hexdigest()


def assignment_token(assignment: Assignment) -> str:
    return signing.dumps({"a": assignment.pk, "j": assignment.job_id}, salt=TOKEN_SALT)


def assignment_from_token(token: str, assignment_id: int) -> Assignment:
    """The active assignment a transfer token was issued for, or NotFound."""
    try:
        data = signing.loads(token, salt=TOKEN_SALT, max_age=settings.ASSIGNMENT_TOKEN_TTL_S)
    except signing.BadSignature:
        raise NotFound("Unknown or expired transfer token.") from None
    if data.get("a") != assignment_id:
        raise NotFound("This token is for another assignment.")
    assignment = Assignment.objects.select_related("job", "job__dataset").filter(
        pk=assignment_id, status__in=Assignment.ACTIVE).first()
    if assignment is None:
        raise NotFound("That assignment is not running.")
    return assignment


def start_message(assignment: Assignment) -> dict:
    job = assignment.job
    base = f"/api/v1/agent/assignments/{assignment.pk}/"
    if job.dataset_ref.startswith("sample:"):
        dataset = {"kind": "sample", "name": job.dataset_ref.removeprefix("sample:")}
    elif job.dataset is None:  # a code bundle that makes its own data
        dataset = {"kind": "none"}
    else:  # an upload: a CSV, or a zip of files that a code bundle reads
        dataset = {"kind": job.dataset.kind}
    resume = None
    if assignment.resume_step is not None:
        resume = job.checkpoints.filter(step=assignment.resume_step,
                                        committed_at__isnull=False).first()
    rdzv = None
    if assignment.node_rank > 0:
        rank0 = job.assignments.filter(attempt=assignment.attempt, node_rank=0).latest("pk")
        rdzv = {"host": rank0.rdzv_host, "port": rank0.rdzv_port}
    is_cpu = catalogue.CPU in job.gpu_models
    return agent_message(
        "assignment.start", assignment=assignment.pk, job=job.pk, job_name=job.name,
        template=job.template, params=job.params, dataset=dataset,
        dataset_url=f"{base}dataset/" if dataset["kind"] in ("csv", "zip") else None,
        dataset_sha256=job.dataset.sha256 if job.dataset is not None else None,
        bundle=bundle_spec(job, base),
        # A fine-tune: the state_dict every rank loads into its model before step 0.
        weights={"url": f"{base}weights/", "sha256": job.weights.sha256,
                 "size_bytes": job.weights.size_bytes} if job.weights is not None else None,
        nnodes=job.nodes, node_rank=assignment.node_rank, nproc_per_node=assignment.gpus,
        backend="gloo" if is_cpu else "nccl", rdzv=rdzv, sync=job.sync or {"mode": "ddp"},
        # The other nodes' addresses: with rdzv's host, all its firewalled sandbox may reach.
        peers=assignment_peers(assignment) if job.nodes > 1 else [],
        peer_timeout_s=settings.DILOCO_PEER_TIMEOUT_S,
        resume_checkpoint_url=f"{base}checkpoints/{resume.step}/" if resume else None,
        resume_checkpoint_sha256=resume.sha256 if resume else None,
        upload_url=base, token=assignment_token(assignment), pg_timeout_s=60, job_secret=job_secret(job),
        verify=verification.verify_spec(),
    )


def assignment_dispatch(*, assignment_id: int) -> bool:
    """Send a placed assignment to its agent (idempotent: only a pending one is sent)."""
    with transaction.atomic():
        assignment = assignment_claim_dispatch(assignment_id)
        if assignment is None:
            return False
        send_to_node(assignment.node_id, start_message(assignment))
    return True


def dispatchable(assignments: list[Assignment]) -> list[int]:
    """Rank 0 goes first: the others need the rendezvous address it reports."""
    return [a.pk for a in assignments if a.node_rank == 0 or a.job.nodes == 1]


STALLED_DISPATCH_S = 10  # placing and sending take well under a second


def assignments_dispatch_stalled() -> int:
    """Send placed assignments whose dispatch never happened: the worker that placed them
    died before it sent the dispatch task, and its redelivered task finds the job placed and
    sends nothing (the chaos suite found such a job waiting for ever). Periodic; the claim in
    assignment_dispatch sends each once. Ranks after 0 wait for rank 0's rendezvous."""
    cutoff = timezone.now() - timedelta(seconds=STALLED_DISPATCH_S)
    stalled = Assignment.objects.select_related("job").filter(status=A.PENDING, created_at__lt=cutoff)
    ready = set(dispatchable(list(stalled)))
    ready |= {a.pk for a in stalled if a.node_rank > 0 and Assignment.objects.filter(
        job_id=a.job_id, attempt=a.attempt, node_rank=0, rdzv_port__isnull=False).exists()}
    return sum(assignment_dispatch(assignment_id=pk) for pk in sorted(ready))


# --- a placement that broke ---------------------------------------------------------
def _interrupt(job: Job, *, reason: str, message: str, exclude_node: int | None) -> None:
    """A placement broke: stop its other parts and place the job again (or give up)."""
    job_stop_assignments(job=job, reason=message)
    if exclude_node is not None and exclude_node not in job.excluded_nodes:
        job.excluded_nodes = [*job.excluded_nodes, exclude_node]
        job.save(update_fields=["excluded_nodes", "updated_at"])
    if job.status not in (S.RUNNING, S.MATCHING):
        return
    if placement.attempts_used(job) >= placement.max_attempts():
        job_states.transition(job_id=job.pk, to=S.FAILED, reason="too_many_attempts",
                              message=f"{message} Gave up after {job.attempt} placements.")
        return
    if job.status == S.MATCHING:
        # Broke before every node accepted (e.g. lost between dispatch and start): the job
        # is still matching, so it is placed again as it is (the tests/payments lifecycle
        # property test found MATCHING → INTERRUPTED raising here, which rolled the loss back).
        job_states.note(job_id=job.pk, reason=reason, message=message)
        enqueue.match_job(job.pk)
        return
    job_states.transition(job_id=job.pk, to=S.INTERRUPTED, reason=reason, message=message)
    enqueue.match_job(job.pk)


# --- what agents say ---------------------------------------------------------------
def agent_hello(*, node: Node, hello: dict) -> list[dict]:
    """Record the agent's hardware and presence; answer with what it should be running.
    An agent announcing test-only faults is refused unless settings.ALLOW_AGENT_FAULTS."""
    faults = hello.get("faults")
    if faults and not settings.ALLOW_AGENT_FAULTS:
        raise AgentRefused(f"This agent runs with test-only faults ({json.dumps(faults)[:200]}): this "
                           "platform does not accept such agents. Unset COMPUTEMESH_FAULTS.",
                           code="faults_refused")
    tflops = hello.get("benchmark_tflops")
    node_set_presence(node_id=node.pk, online=True, heartbeat_at=timezone.now(),
                      benchmark_tflops=round(float(tflops), 3) if isinstance(tflops, int | float) else None,
                      agent_version=str(hello.get("agent_version", ""))[:32])
    # The hardware it reports against what its offers list: one that lists more leaves the market.
    claims.node_hardware_report(node=node, hardware=hello.get("hardware"))
    node_runtime_report(node=node, runtime=hello.get("runtime"))
    node_network_report(node=node, sandbox=hello.get("sandbox"), advertise_addr=hello.get("advertise_addr"))
    active = list(Assignment.objects.filter(node=node, status__in=Assignment.ACTIVE))
    out = [agent_message("welcome", node=node.pk, name=node.name, heartbeat_s=settings.AGENT_HEARTBEAT_S,
                    assignments=[a.pk for a in active])]
    unacked = hello.get("unacked")
    return out + agent_heartbeat(node=node, running=hello.get("running") or [], touch=False,
                                 unacked=unacked if isinstance(unacked, list) else None,
                                 steps=hello.get("steps"))


def agent_heartbeat(*, node: Node, running: list, touch: bool = True,
                    unacked: list | None = None, steps: Any = None) -> list[dict]:
    """Re-send starts the agent has not acted on; cancel what it runs but should not. An
    assignment that started here but that the agent neither runs nor still has messages
    about (`unacked`: its outbox's assignments) was lost with the agent: a machine that
    rebooted within the heartbeat timeout does not go silent, so this is how it is noticed."""
    if touch:
        node_set_presence(node_id=node.pk, online=True, heartbeat_at=timezone.now())
    assignment_steps_record(node=node, steps=steps)  # each node's own step (services/liveness.py)
    running_ids = assignment_ids(running)
    out = []
    active = {a.pk: a for a in Assignment.objects.select_related("job").filter(
        node=node, status__in=Assignment.ACTIVE)}
    if unacked is not None:  # an agent that does not say is caught by the heartbeat timeout
        for assignment in [a for a in active.values() if a.status in (A.ACCEPTED, A.RUNNING)
                           and a.pk not in running_ids | assignment_ids(unacked)]:
            if _assignment_lost(assignment, "its agent restarted without it"):
                del active[assignment.pk]
    ended = running_ids - set(active)
    if ended:  # the push was missed or is still on its way: say the same reason it did
        why = dict(Assignment.objects.filter(pk__in=ended, node=node, status__in=(
            A.CANCELLED, A.FAILED, A.LOST)).values_list("pk", "detail"))
        for assignment_id in sorted(ended):
            out.append(cancel_message(assignment_id, why.get(assignment_id) or
                                      "the platform no longer runs this assignment here"))
    stale = timezone.now() - timedelta(seconds=settings.AGENT_HEARTBEAT_S)
    for assignment in active.values():
        if (assignment.status == A.DISPATCHED and assignment.pk not in running_ids
                and assignment.dispatched_at and assignment.dispatched_at < stale):
            out.append(start_message(assignment))
        elif assignment.job.pause_requested_at is not None and assignment.pk in running_ids:
            out.append(pause_message(assignment))  # pushed once; repeated until it stops
    return out


# --- what agents' numbered messages do (applied by services/agent_ingest.py) ---------
def assignment_accepted(a: Assignment, m: dict) -> None:
    """The agent took its part: rank 0's rendezvous is kept and the others are sent; once
    every node has accepted, the job runs."""
    why = claims.assignment_claims_check(a)
    if why is not None:  # the offer lists more than the node reported: it does not run it
        assignment_rejected(a, {"reason": f"the node's hardware does not match its offer: {why}"})
        return
    if a.node_rank == 0 and m.get("rdzv_refused"):  # the others would be sent elsewhere
        assignment_rejected(a, {"reason": f"rendezvous refused: {m['rdzv_refused']}"})
        return
    rdzv = m.get("rdzv") or {}
    fields = {"status": A.ACCEPTED, "started_at": timezone.now()}
    if a.node_rank == 0:
        fields.update(rdzv_host=str(rdzv.get("host", ""))[:255], rdzv_port=int(rdzv.get("port") or 0) or None)
    Assignment.objects.filter(pk=a.pk, status=A.DISPATCHED).update(**fields)
    job = a.job
    if a.node_rank == 0 and job.nodes > 1:
        for other in job.assignments.filter(attempt=a.attempt, node_rank__gt=0, status=A.PENDING):
            assignment_dispatch(assignment_id=other.pk)
    siblings = job.assignments.filter(attempt=a.attempt)
    if job.status == S.MATCHING and not siblings.exclude(status__in=(A.ACCEPTED, A.RUNNING)).exists():
        job_states.transition(job_id=job.pk, to=S.RUNNING, reason="started",
                              message=(f"All {job.nodes} nodes accepted" if job.nodes > 1
                                       else "The node accepted") + "; training is starting.")
        Job.objects.filter(pk=job.pk, started_at__isnull=True).update(started_at=timezone.now())


def assignment_rejected(a: Assignment, m: dict) -> None:
    """The agent will not run its part: it fails and the job is placed again without it."""
    reason = m.get("reason") or "rejected by the agent"  # cleaned by parse_data
    assignment_end(a, A.FAILED, reason)
    _interrupt(Job.objects.get(pk=a.job_id), reason="assignment_rejected",
               message=f"Node {a.node_id} rejected its part: {reason}", exclude_node=a.node_id)


def assignment_finished(a: Assignment, m: dict) -> None:
    """The part ended (succeeded, failed or paused): the job follows."""
    job = Job.objects.select_for_update().get(pk=a.job_id)
    if m.get("data_deleted"):  # the agent's word (issue 13 item 7): shown on the job's timeline
        job_states.note(job_id=job.pk, reason="data_deleted",
                        message=f"Data deleted from node {a.node_id}: the job's dataset, checkpoints "
                                "and code on that machine, as its part ended.",
                        data={"node": a.node_id, "assignment": a.pk})
    sent, ddp = loose_int(m.get("comm_bytes"), None), loose_int(m.get("comm_bytes_ddp"), None)
    if sent is not None or ddp is not None:  # this node's traffic, kept with the job (per node)
        Assignment.objects.filter(pk=a.pk).update(comm_bytes=sent, comm_bytes_ddp=ddp)
    if m.get("status") == "paused" and job.pause_requested_at is not None:
        assignment_end(a, A.PAUSED, f"checkpointed and paused at step {loose_int(m.get('step'))}")
        job_paused_by_nodes(job=job, attempt=a.attempt)
        return
    if m.get("status") != "succeeded":
        error = str(m.get("error") or "training failed")[:1500]
        assignment_end(a, A.FAILED, error)
        if m.get("error_kind") == "dataset":
            job_stop_assignments(job=job, reason="the job failed")
            job_states.transition(job_id=job.pk, to=S.FAILED, reason="dataset_error",
                                  message=f"The dataset cannot be used: {error}")
            return
        if m.get("error_kind") == "weights":  # the consumer's file does not fit their model
            job_stop_assignments(job=job, reason="the job failed")
            job_states.transition(job_id=job.pk, to=S.FAILED, reason="weights_error",
                                  message=f"The weights file cannot be used: {error}")
            return
        if m.get("error_kind") == "resume" and a.resume_step is not None:
            _resume_failed(job, a, error)
            return
        if is_diloco(job) and a.node_rank > 0:
            _diloco_node_gone(job, a, f"its training failed: {error.splitlines()[0][:300]}")
            return
        if _blame_later(job, a, error):
            return
        _interrupt(job, reason="assignment_failed",
                   message=f"Training failed on node {a.node_id}: {error.splitlines()[0][:300]}",
                   exclude_node=a.node_id)
        return
    detail = "finished"
    if a.node_rank == 0:
        if m.get("artifact_sha256") != job.artifact_sha256:
            assignment_end(a, A.FAILED, "the reported model is not the one uploaded")
            _interrupt(job, reason="artifact_mismatch", exclude_node=a.node_id,
                       message=f"Node {a.node_id} reported a model it did not upload.")
            return
        digests = [str(d)[:64] for d in (m.get("param_digests") or [])][:256]
        detail = json.dumps({"param_digests": digests})
        job.metric_name = m.get("metric") or ""
        job.metric_value = loose_float(m.get("value"))
        job.current_step = int(m.get("step") or job.current_step)
        job.save(update_fields=["metric_name", "metric_value", "current_step", "updated_at"])
        if len(set(digests)) > 1:
            job_states.note(job_id=job.pk, reason="ranks_diverged",
                            message="Ranks finished with different parameters.")
    assignment_end(a, A.SUCCEEDED, detail)
    if job.status == S.RUNNING and _attempt_done(job, a.attempt):
        _complete(Job.objects.get(pk=job.pk), attempt=a.attempt)


def _resume_failed(job: Job, a: Assignment, error: str) -> None:
    """The node could not load the checkpoint the platform handed it: that checkpoint's
    author is answerable, never the node that tried (a provider that uploaded garbage and
    vanished used to get the next honest node excluded). The checkpoint is checked again
    (pending meanwhile, so the new placement resumes from an earlier one): if the platform
    cannot load it either it is rejected, unpaid, and its author's node left out of the job
    (checkpoint_checks.checkpoint_validate). The node that reported it is not excluded."""
    checked = (Checkpoint.Status.VALID, Checkpoint.Status.VERIFIED)
    ckpt = None if a.resume_step is None else job.checkpoints.filter(
        step=a.resume_step, status__in=checked).first()
    if ckpt is not None and Checkpoint.objects.filter(pk=ckpt.pk, status__in=checked).update(
            status=Checkpoint.Status.PENDING, validated_at=None, replay_requested_at=None, replay={}):
        checkpoint_checks.checkpoint_validate_enqueue(ckpt)
    _interrupt(job, reason="resume_failed", exclude_node=None,
               message=f"Node {a.node_id} could not resume from the checkpoint at step {a.resume_step}: "
                       f"{error.splitlines()[0][:300]}. That checkpoint is checked again; the job is "
                       "placed again from an earlier one.")


def attribution_delay_s() -> float:
    """How long a failed part of a multi-node DDP job waits before its node is blamed: until a
    peer that died with it is surely noticed (the heartbeat timeout, plus two runs of the
    5 s heartbeat watchdog), or its restarted agent has said hello without it."""
    return settings.NODE_HEARTBEAT_TIMEOUT_S + 10


def _blame_later(job: Job, a: Assignment, error: str) -> bool:
    """One node of a DDP process group across nodes failed while the others still run. When
    a node dies, every other node's collectives fail within a second, usually before the
    platform notices the dead one (its heartbeats stop for the timeout first, or its
    restarted agent has to say hello); blaming the first node to report excluded the healthy
    survivor and cancelled the dead node's part. So the failed part ends now and the blame
    waits: a peer of the same placement found lost meanwhile interrupts the job and is the
    one excluded (_assignment_lost); otherwise `attempt_failure_settle` blames the first node
    that failed, as before. True when it waits."""
    if is_diloco(job) or job.nodes < 2 or job.status != S.RUNNING:
        return False
    if not job.assignments.filter(attempt=a.attempt, status__in=Assignment.ACTIVE).exists():
        attempt_failure_settle(job_id=job.pk, attempt=a.attempt)  # nobody left to hear from
        return True
    delay = attribution_delay_s()
    job_states.note(job_id=job.pk, reason="node_failed",
                    message=f"Training failed on node {a.node_id}: {error.splitlines()[0][:300]}. "
                            f"Waiting up to {delay:g} s for the other nodes of this placement: a node "
                            "lost meanwhile broke the group; otherwise this one is excluded.")
    enqueue.enqueue(task_names.ATTEMPT_FAILURE_SETTLE, job.pk, a.attempt, countdown=delay)
    return True


def attempt_failure_settle(*, job_id: int, attempt: int) -> bool:
    """A part of this placement failed and no peer was lost since (or the job would have
    been interrupted already): the first node that failed is blamed, excluded, and the job
    placed again. Idempotent: does nothing once the job moved on. True when it acted."""
    with transaction.atomic():
        job = lock_job_and_parts(job_id)
        if job.status != S.RUNNING or job.attempt != attempt:
            return False
        first = (job.assignments.filter(attempt=attempt, status=A.FAILED)
                 .order_by("finished_at", "pk").first())
        if first is None:
            return False
        _interrupt(job, reason="assignment_failed",
                   message=f"Training failed on node {first.node_id}: "
                           f"{(first.detail or 'training failed').splitlines()[0][:300]}",
                   exclude_node=first.node_id)
    return True


def _attempt_done(job: Job, attempt: int) -> bool:
    parts = job.assignments.filter(attempt=attempt)
    if not is_diloco(job):
        return not parts.exclude(status=A.SUCCEEDED).exists()
    # DiLoCo: node rank 0 ends with the final global model, which every node that was still
    # taking part has too; nodes lost on the way were replaced or left out. A replacement
    # that has not started yet is not needed any more.
    if not parts.filter(node_rank=0, status=A.SUCCEEDED).exists():
        return False
    for late in parts.filter(status__in=(A.PENDING, A.DISPATCHED)):
        assignment_end(late, A.CANCELLED, "the job finished before this node could join")
    return not parts.filter(status__in=(A.ACCEPTED, A.RUNNING)).exists()


def _diloco_node_gone(job: Job, a: Assignment, why: str) -> None:
    """A DiLoCo node other than rank 0 stopped: the others go on without it (their outer
    rounds drop it), and a replacement, placed now or as soon as a node is free, joins at
    their next outer step from the current global model. No restart."""
    if a.node_id not in job.excluded_nodes:
        job.excluded_nodes = [*job.excluded_nodes, a.node_id]
        job.save(update_fields=["excluded_nodes", "updated_at"])
    if job.status != S.RUNNING:
        return
    if _attempt_done(job, a.attempt):
        _complete(Job.objects.get(pk=job.pk), attempt=a.attempt)
        return
    job_states.note(job_id=job.pk, reason="node_dropped",
                    message=f"Node rank {a.node_rank} (node {a.node_id}) left the job: {why}. The "
                            "other nodes continue; a replacement joins at their next outer step.")
    diloco_fill(job_id=job.pk)


def diloco_fill(*, job_id: int) -> int:
    """Place replacements for a running DiLoCo job's missing ranks and send them out."""
    placed = placement.diloco_replace(job_id=job_id)
    for assignment in placed:
        assignment_dispatch(assignment_id=assignment.pk)
    return len(placed)


def diloco_fill_missing() -> int:
    """Periodically: running DiLoCo jobs short of a node whose replacement found no machine."""
    return sum(diloco_fill(job_id=job_id) for job_id in placement.diloco_jobs_short())


def _complete(job: Job, *, attempt: int) -> None:
    rank0 = job.assignments.get(attempt=attempt, node_rank=0)
    try:
        digests = json.loads(rank0.detail).get("param_digests", [])
    except ValueError:
        digests = []
    label = {"accuracy": "accuracy", "mape": "mean absolute percentage error"}.get(
        job.metric_name, job.metric_name)
    if job.metric_value is None:
        value = "not reported"
    elif job.metric_name == "accuracy":
        value = f"{job.metric_value:.2%}"
    else:
        value = f"{job.metric_value:.2f}" + (" %" if job.metric_name == "mape" else "")
    job_states.transition(job_id=job.pk, to=S.VERIFYING, reason="training_finished",
                          message=f"Training finished at step {job.current_step}; held-out {label} {value}.",
                          data={"param_digests": digests, "metric": job.metric_name,
                                "value": job.metric_value, "attempt": attempt})
    # Completed only once the work is verified (services/verification.py, verify queue).
    verification.verification_start(job=job, attempt=attempt)


# --- node loss ---------------------------------------------------------------------
def node_lost(*, node_id: int, reason: str = "heartbeats stopped") -> int:
    """Mark a silent node offline, fail its assignments and re-place their jobs."""
    node_set_presence(node_id=node_id, online=False)
    return sum(_assignment_lost(assignment, reason) for assignment in
               Assignment.objects.filter(node_id=node_id, status__in=Assignment.ACTIVE))


def node_assignments_stop(*, node_id: int, reason: str) -> int:
    """The platform takes a node out (its organization suspended): its work ends cancelled
    with the reason and each job resumes elsewhere from its last checkpoint, without it."""
    return sum(_assignment_lost(assignment, reason, status=A.CANCELLED, why="node_removed",
                                what="was taken off the platform")
               for assignment in Assignment.objects.filter(node_id=node_id, status__in=Assignment.ACTIVE))


def _assignment_lost(assignment: Assignment, reason: str, *, status: str = A.LOST, why: str = "node_lost",
                     what: str = "was lost") -> bool:
    """The node lost this assignment's work: end it and resume the job elsewhere."""
    node_id = assignment.node_id
    with transaction.atomic():
        job = lock_job_and_parts(assignment.job_id)
        if not assignment_end(assignment, status, reason):
            return False
        if is_diloco(job) and assignment.node_rank > 0 and assignment.attempt == job.attempt:
            _diloco_node_gone(job, assignment, f"node {node_id} {what} ({reason})")
            return True
        _interrupt(job, reason=why,
                   message=f"Node {node_id} {what} ({reason}); resuming elsewhere from the "
                           "last checkpoint.", exclude_node=node_id)
    return True


def nodes_silent(*, timeout_s: int | None = None) -> list[int]:
    timeout_s = timeout_s or settings.NODE_HEARTBEAT_TIMEOUT_S
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    return list(Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat_at__lt=cutoff)
                .values_list("pk", flat=True))
