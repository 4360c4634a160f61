"""The verify queue: checking finished training work and uploaded checkpoints (torch runs in
this worker)."""

from celery import shared_task

from marketplace.services import checkpoint_checks, determinism, verification


def _torch_half():
    """The verifier's torch half: imported by the task when it runs, so that the plain
    workers (and Celery's autodiscovery of this module) need no torch. Its *_sandboxed
    functions run a consumer's own task (a code bundle) inside the sandbox, templates here."""
    import workers.verify

    return workers.verify


# Replays stay under 10 % of the training they check; the limit stays below the broker's
# visibility timeout (1 h) so Redis never hands a running check to a second worker.
@shared_task(bind=True, name="workers.tasks_verify.verify_attempt", acks_late=True,
             reject_on_worker_lost=True, time_limit=1800, soft_time_limit=1700, max_retries=10)
def verify_attempt(self, report_id: int) -> str:
    try:
        return verification.verification_run(report_id=report_id, check=_torch_half().check_attempt_sandboxed)
    except Exception as exc:
        # Any error, not only unreadable files: before, anything else left the job verifying
        # for ever with its deposit locked. The runs are counted on the report (a worker
        # killed mid-check is redelivered and counts too), so this ends in an outcome.
        if verification.verification_retry_due(report_id=report_id):
            raise self.retry(exc=exc, countdown=5 * 2 ** self.request.retries) from exc
        verification.verification_error(report_id=report_id, message=f"{type(exc).__name__}: {exc}")
        return "error"


# The progress naming a checkpoint's step normally arrives first; when it has not, look
# again shortly (checkpoint_validate rejects once PROGRESS_WAIT_S have passed).
@shared_task(bind=True, name="workers.tasks_verify.checkpoint_validate", acks_late=True,
             reject_on_worker_lost=True, time_limit=300, soft_time_limit=280, max_retries=20,
             autoretry_for=(OSError,), retry_backoff=2)
def checkpoint_validate(self, checkpoint_id: int) -> str:
    status = checkpoint_checks.checkpoint_validate(checkpoint_id=checkpoint_id,
                                               problem_of=_torch_half().checkpoint_problem_sandboxed)
    if status == "pending":
        raise self.retry(countdown=3)
    return status


# The replay of a broken or paused attempt's resume point: one segment or a few, like a
# spot check of finished work. A check that keeps raising leaves the checkpoint untrusted.
@shared_task(bind=True, name="workers.tasks_verify.checkpoint_replay", acks_late=True,
             reject_on_worker_lost=True, time_limit=1800, soft_time_limit=1700, max_retries=3)
def checkpoint_replay(self, checkpoint_id: int) -> str:
    try:
        return checkpoint_checks.checkpoint_replay(checkpoint_id=checkpoint_id,
                                              check=_torch_half().check_attempt_sandboxed)
    except Exception as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=5 * 2 ** self.request.retries) from exc
        checkpoint_checks.checkpoint_replay_error(checkpoint_id=checkpoint_id,
                                             message=f"{type(exc).__name__}: {exc}")
        return "error"


# A consumer's task replayed a few steps twice, before the consumer pays (services/determinism.py).
# A check that keeps raising (no sandbox on this worker, a task that crashes) ends `error`:
# the quote says so and the verification checks determinism itself.
@shared_task(bind=True, name="workers.tasks_verify.determinism_check", acks_late=True,
             reject_on_worker_lost=True, time_limit=1200, soft_time_limit=1100, max_retries=2)
def determinism_check(self, check_id: int) -> str:
    try:
        return determinism.determinism_run(check_id=check_id,
                                           check=_torch_half().check_determinism_sandboxed)
    except Exception as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=5 * 2 ** self.request.retries) from exc
        determinism.determinism_error(check_id=check_id, message=f"{type(exc).__name__}: {exc}")
        return "error"


@shared_task(name="workers.tasks_verify.verify_stale", time_limit=60, soft_time_limit=50)
def verify_stale() -> int:
    """Periodically: checks whose task was lost are queued again."""
    return (verification.verifications_stale() + checkpoint_checks.checkpoints_stale()
            + determinism.determinism_stale())
