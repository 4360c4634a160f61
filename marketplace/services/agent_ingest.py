"""The agent ingest: numbered data messages applied exactly once, in order, each
assignment's stream after its last applied `seq` (services/agent_protocol.py checks them).
The agent sockets' ingest engine (consumers/ingest.py) gathers every socket's messages
into one group commit (`agent_data_batch`); progress, nearly all of the traffic, is stored
in bulk, log lines and checkpoint commits here, and what changes the lifecycle (accepted,
rejected, finished) goes to services/execution.py. Persisted first, broadcast after commit.
"""

import logging
from types import SimpleNamespace

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import job_states
from ..models import Assignment, Job, LogLine, MetricPoint, Node
from ..selectors.live import log_line, point
from . import live
from .agent_protocol import AgentMessageError, applicable, check_seq, parse_batch, parse_data, progress_items
from .bulk import bulk_insert, bulk_set
from .execution import assignment_accepted, assignment_finished, assignment_rejected

log = logging.getLogger(__name__)
A = Assignment.Status


def agent_data(*, node: Node, message: dict) -> str:
    """Apply one numbered message about an assignment of this node, exactly once.
    Returns "applied" or "duplicate"; raises AgentMessageError (not acked)."""
    kind, assignment_id, seq, message = parse_data(message)
    with transaction.atomic():
        _lock({assignment_id}, {assignment_id} if kind in LIFECYCLE else set())
        assignment = Assignment.objects.select_related("job").filter(pk=assignment_id).first()
        if not check_seq(assignment, node, seq):
            return "duplicate"
        assignment.last_seq = seq
        assignment.save(update_fields=["last_seq"])
        if assignment.status in Assignment.ACTIVE:
            HANDLERS[kind](assignment, message)
    return "applied"


def agent_data_batch(*, items: list[tuple[Node, dict]], outbox: list | None = None,
                     snapshots: set | None = None) -> list[AgentMessageError | None]:
    """Apply the messages queued on this process's agent sockets in one transaction (group
    commit), in arrival order; each assignment's messages stay in sequence. Progress, nearly
    all of the traffic, is stored in bulk: a handful of queries per batch however many jobs
    it holds. Any other message runs in a savepoint of its own, so a refused one undoes only
    itself. Broadcasts are merged, and gathered in `outbox` when given (the caller sends
    them from its event loop); with `snapshots`, the jobs due a progress snapshot are added to
    it instead of snapshotted here."""
    results, parsed = parse_batch(items)
    with live.coalesced(outbox, snapshots), transaction.atomic():
        # Without the job: progress, nearly all of the traffic, needs only job_id (a job row
        # with its JSON fields cost the ingest ~10 % of its CPU); handlers load it if needed.
        locked = _lock({p[4] for p in parsed}, {p[4] for p in parsed if p[3] in LIFECYCLE})
        progress: list[tuple[Assignment, dict]] = []
        numbered: dict[int, Assignment] = {}
        for i, message, kind, a, seq in applicable(parsed, locked, results):
            if kind == "progress":
                a.last_seq, numbered[a.pk] = seq, a
                if a.status in Assignment.ACTIVE:
                    progress.append((a, message))
                continue
            _store_progress(progress)  # what came before this message, first
            progress = []
            try:
                with transaction.atomic():
                    Assignment.objects.filter(pk=a.pk).update(last_seq=seq)
                    if a.status in Assignment.ACTIVE:
                        HANDLERS[kind](a, message)
            except AgentMessageError as exc:
                results[i] = exc
                continue
            except Exception as exc:  # a bug: its savepoint is undone, the batch goes on
                log.exception("agent message %s for assignment %s failed", kind, a.pk)
                results[i] = AgentMessageError(f"not applied ({type(exc).__name__}); resend later",
                                               code="internal")
                continue
            a.last_seq = seq
            numbered.pop(a.pk, None)
            # A handler may end any assignment of the job (or of others): see it as it is now.
            for pk, status in Assignment.objects.filter(pk__in=locked).values_list("pk", "status"):
                locked[pk].status = status
        _store_progress(progress)
        if numbered:
            bulk_set(Assignment, list(numbered.values()), ["last_seq"])
    return results


# What may end the job's other parts: a failure or a rejection interrupts the placement.
LIFECYCLE = frozenset({"assignment.accepted", "assignment.rejected", "assignment.finished"})


def _lock(ids: set[int], lifecycle: set[int]) -> dict[int, Assignment]:
    """Lock these assignments and, for those with a lifecycle message, every active part of
    their jobs: all in id order, before any job row (lock_job_and_parts' order). Locked in id
    order, two processes' batches cannot deadlock; with the siblings taken up front, a handler
    that takes the job and then ends a sibling never waits for one held by a batch that waits
    for the job (two nodes of one job failing at once deadlocked so, tests/test_lock_order.py)."""
    wanted = Q(pk__in=ids)
    if lifecycle:
        jobs = Assignment.objects.filter(pk__in=lifecycle).values_list("job_id", flat=True)
        wanted |= Q(job_id__in=list(jobs), status__in=Assignment.ACTIVE)
    return {a.pk: a for a in Assignment.objects.select_for_update(of=("self",)).filter(wanted).order_by("pk")}


def _store_progress(batch: list[tuple[Assignment, dict]]) -> None:
    """Persist progress messages in bulk (one insert, one update of the jobs), then queue
    one metrics broadcast per job and a throttled snapshot."""
    if not batch:
        return
    now = timezone.now()
    job_fields = ["metric_seq", "current_step", "total_steps", "last_loss", "samples_per_sec",
                  "comm_bytes", "comm_bytes_ddp", "updated_at"]
    jobs = {j.pk: j for j in Job.objects.select_for_update(of=("self",)).only(*job_fields).filter(
        pk__in={a.job_id for a, _ in batch}).order_by("pk")}
    points: dict[int, list[SimpleNamespace]] = {}
    started = set()
    for a, m in batch:
        job = jobs[a.job_id]
        for item in progress_items(m):
            job.metric_seq += 1
            points.setdefault(job.pk, []).append(SimpleNamespace(
                job_id=job.pk, assignment_id=a.pk, seq=job.metric_seq, **item))
        if a.status == A.ACCEPTED:
            started.add(a.pk)
            a.status = A.RUNNING
    if not points:
        return
    bulk_insert(MetricPoint, [vars(p) for ps in points.values() for p in ps])
    for job_id, ps in points.items():
        job, last = jobs[job_id], ps[-1]
        job.current_step, job.total_steps, job.updated_at = last.step, last.total_steps, now
        for field in ("loss", "samples_per_sec", "comm_bytes", "comm_bytes_ddp"):
            value = getattr(last, field)
            if value is not None:
                setattr(job, "last_loss" if field == "loss" else field, value)
        live.broadcast(job_id, {"type": "metrics", "points": [point(p) for p in ps]})
        live.job_changed(job_id, throttle=True)
    bulk_set(Job, [jobs[j] for j in points], job_fields)
    if started:
        Assignment.objects.filter(pk__in=started, status=A.ACCEPTED).update(status=A.RUNNING)


def _on_progress(a: Assignment, m: dict) -> None:
    _store_progress([(a, m)])


MAX_LOG_LINES_PER_JOB = 20_000  # the rest of a chatty job's output is not kept


def _on_log(a: Assignment, m: dict) -> None:
    """Store the lines of the ranks this assignment runs (node_rank × gpus onwards; a rank
    of another assignment is refused, the rest of the message kept), up to the job's cap."""
    first_rank = a.node_rank * a.gpus
    ours = [x for x in m.get("lines") or []
            if x["rank"] is None or first_rank <= x["rank"] < first_rank + a.gpus]
    if len(ours) < len(m.get("lines") or []):
        log.warning("assignment %s sent log lines of ranks it does not run; dropped", a.pk)
    job = Job.objects.select_for_update().only("log_seq").get(pk=a.job_id)
    ours = ours[:max(0, MAX_LOG_LINES_PER_JOB - job.log_seq)]
    if not ours:
        return
    first = job.log_seq + 1
    rows = LogLine.objects.bulk_create([
        LogLine(job_id=a.job_id, assignment=a, seq=first + i, rank=x["rank"], stream=x["stream"],
                line=x["text"]) for i, x in enumerate(ours)])
    Job.objects.filter(pk=a.job_id).update(log_seq=first + len(ours) - 1)
    live.broadcast(a.job_id, {"type": "logs", "lines": [log_line(x) for x in rows]})


def _on_checkpoint(a: Assignment, m: dict) -> None:
    """The agent commits to a checkpoint it uploaded: the hashes must agree."""
    ckpt = a.checkpoints.filter(step=int(m.get("step", -1))).first()
    if ckpt is None or ckpt.sha256 != m.get("sha256"):
        job_states.note(job_id=a.job_id, reason="checkpoint_mismatch",
                        message=f"Node {a.node_id} reported checkpoint {m.get('step')} that was not "
                                "uploaded with that SHA-256; it is ignored.")
        return
    if ckpt.committed_at is None:
        ckpt.committed_at = timezone.now()
        ckpt.save(update_fields=["committed_at"])


HANDLERS = {
    "assignment.accepted": assignment_accepted, "assignment.rejected": assignment_rejected,
    "progress": _on_progress, "log": _on_log, "checkpoint": _on_checkpoint,
    "assignment.finished": assignment_finished,
}
