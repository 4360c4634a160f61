"""The determinism check of a consumer's task, before the consumer pays (issue 16).

Step replay is evidence only for a task that gives the same bits twice from the same state
under the runtime's seeding; one that draws from the clock or an unseeded generator is
verified by held-out evaluation only, and is never disputed for replaying differently. The
consumer is told which before funding: a quote or a submission of a code bundle asks the
verify queue to replay a few steps twice (workers/verify, inside the verifier's sandbox),
once per (bundle, data, params, world size): the answer is stored (DeterminismCheck), shown
by the quote and the job page (selectors/determinism.py) and reused by the verification,
which checks again itself only when no answer is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .. import task_names
from ..models import DeterminismCheck
from ..selectors.determinism import determinism_key, verification_method
from . import enqueue
from .job_spec import JobSpec
from .verification import task_inputs

log = logging.getLogger(__name__)

D = DeterminismCheck.Status
MAX_RUNS = 3  # a check that keeps failing (no sandbox here, a broken task) stops being asked
# Checks one organization's quotes may have waiting or running at once: the form asks a quote
# as the consumer types its params, and each new combination would cost the verifier half a
# minute. Over it, the quote says "checking" and asks again later (the quote panel re-asks
# every 2 s while checking); a submitted job's check is always queued.
QUOTE_IN_FLIGHT = 3
RUN_LIMIT = timedelta(seconds=1200)  # the task's time limit: a check running longer died

# The torch half: workers.verify.check_determinism_sandboxed (plan, dataset) -> Determinism.as_dict().
CheckDeterminism = Callable[[dict, dict], dict]


def _diloco_across_nodes(spec: JobSpec) -> bool:
    return (spec.sync or {}).get("mode") == "diloco" and spec.nodes > 1


def _wanted(spec: JobSpec) -> bool:
    """A consumer's own task whose work would be verified by step replay (DiLoCo across
    nodes is evaluated only, whatever the task)."""
    return spec.bundle_obj is not None and not _diloco_across_nodes(spec)


def determinism_request(*, spec: JobSpec, quote: bool = False) -> DeterminismCheck | None:
    """The stored check for a validated spec's task, queued once (again after an error,
    within MAX_RUNS); None when the job needs none, or for a `quote` while its organization
    has QUOTE_IN_FLIGHT checks waiting (not queued yet: asked again by the next quote)."""
    if not _wanted(spec):
        return None
    assert spec.bundle_obj is not None
    key = determinism_key(bundle=spec.bundle_obj, dataset=spec.dataset_obj, dataset_ref=spec.dataset,
                          params=spec.params, world_size=spec.nodes * spec.gpus_per_node)
    check = DeterminismCheck.objects.filter(key=key).first()
    if check is None and quote:
        waiting = DeterminismCheck.objects.filter(bundle__owner_id=spec.bundle_obj.owner_id,
                                                  status__in=(D.PENDING, D.RUNNING))
        if waiting.count() >= QUOTE_IN_FLIGHT:
            return None
    if check is None:
        try:
            with transaction.atomic():
                check = DeterminismCheck.objects.create(
                    key=key, bundle=spec.bundle_obj, dataset=spec.dataset_obj, dataset_ref=spec.dataset,
                    params=spec.params, world_size=spec.nodes * spec.gpus_per_node)
                enqueue.enqueue(task_names.DETERMINISM_CHECK, check.pk)
        except IntegrityError:  # a concurrent quote created it first and queued it
            check = DeterminismCheck.objects.get(key=key)
    elif check.status == D.ERROR and check.runs < MAX_RUNS and check.bundle_id is not None:
        with transaction.atomic():
            if DeterminismCheck.objects.filter(pk=check.pk, status=D.ERROR).update(status=D.PENDING):
                enqueue.enqueue(task_names.DETERMINISM_CHECK, check.pk)
        check.refresh_from_db()
    return check


def quote_verification(*, spec: JobSpec) -> dict:
    """What a quote says about how the work will be verified (asking the check if needed)."""
    return verification_method(custom_code=spec.bundle_obj is not None, diloco=_diloco_across_nodes(spec),
                               check=determinism_request(spec=spec, quote=True))


def determinism_run(*, check_id: int, check: CheckDeterminism) -> str:
    """Run one stored check with `check` (the torch half, sandboxed) and store its answer.
    Idempotent: a check already answered is left as it is."""
    with transaction.atomic():
        row = DeterminismCheck.objects.select_for_update().filter(pk=check_id).first()
        if row is None or row.status == D.DONE:
            return row.status if row else "missing"
        if row.bundle is None:
            row.status, row.error, row.finished_at = D.ERROR, "the code bundle was deleted", timezone.now()
            row.save(update_fields=["status", "error", "finished_at"])
            return row.status
        row.status, row.started_at, row.runs = D.RUNNING, timezone.now(), row.runs + 1
        row.save(update_fields=["status", "started_at", "runs"])
    plan = {"params": row.params, "world_size": row.world_size}
    with task_inputs(bundle=row.bundle, dataset=row.dataset, dataset_ref=row.dataset_ref) as (dataset, task):
        result = check({**plan, **task}, dataset)  # seconds of the consumer's code, sandboxed
    DeterminismCheck.objects.filter(pk=check_id).exclude(status=D.DONE).update(
        status=D.DONE, deterministic=bool(result["deterministic"]), steps=int(result["steps"]),
        rel_l2=float(result["rel_l2"]), seconds=float(result["seconds"]), error="",
        finished_at=timezone.now())
    log.info("determinism check %s: %s", check_id, result)
    return D.DONE


def determinism_error(*, check_id: int, message: str) -> None:
    """The check could not run (after its retries): the quote says so, and the verification
    checks determinism itself (workers/verify/check.py) before it replays anything."""
    DeterminismCheck.objects.filter(pk=check_id).exclude(status=D.DONE).update(
        status=D.ERROR, error=message[:2000], finished_at=timezone.now())


def determinism_stale(*, queued_for_s: float = 300) -> int:
    """Queue again the checks whose message was lost (pending for `queued_for_s`, or
    running past the task's time limit), within MAX_RUNS."""
    now = timezone.now()
    stale = list(DeterminismCheck.objects.filter(
        Q(status=D.PENDING, created_at__lt=now - timedelta(seconds=queued_for_s))
        | Q(status=D.RUNNING, started_at__lt=now - RUN_LIMIT), runs__lt=MAX_RUNS)
        .values_list("pk", flat=True)[:100])
    for check_id in stale:
        enqueue.enqueue(task_names.DETERMINISM_CHECK, check_id)
    return len(stale)

