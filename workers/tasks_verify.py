"""The verify queue: checking finished training work (torch runs in this worker)."""

from celery import shared_task

from marketplace.services import verification


# Replays stay under 10 % of the training they check; the limit stays below the broker's
# visibility timeout (1 h) so Redis never hands a running check to a second worker.
@shared_task(bind=True, name="workers.tasks_verify.verify_attempt", acks_late=True,
             reject_on_worker_lost=True, time_limit=1800, soft_time_limit=1700,
             autoretry_for=(OSError,), retry_backoff=5, max_retries=3)
def verify_attempt(self, report_id: int) -> str:
    try:
        return verification.verification_run(report_id=report_id)
    except OSError as exc:
        if self.request.retries >= self.max_retries:
            verification.verification_error(report_id=report_id, message=f"files unreadable: {exc}")
            return "error"
        raise


@shared_task(name="workers.tasks_verify.verify_stale", time_limit=60, soft_time_limit=50)
def verify_stale() -> int:
    """Periodically: checks whose task was lost are queued again."""
    return verification.verifications_stale()
