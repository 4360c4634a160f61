"""The chain queue: one worker, concurrency 1, sends and watches the platform's transactions
(nonces come from the database as well, so a second sender would still be safe)."""

from celery import shared_task
from django.conf import settings

from marketplace import task_names
from marketplace.chain import deploy, indexer, sender
from marketplace.chain.client import ChainError
from marketplace.models import ChainTransaction
from marketplace.services import payments, staking


@shared_task(name=task_names.CHAIN_SYNC, time_limit=120, soft_time_limit=100)
def chain_sync() -> int:
    """Receipts of what was sent, re-broadcasts of what is stuck, then the escrow's events."""
    if not settings.ESCROW_ENABLED:
        return 0
    # First: on a chain that is not ours, a re-broadcast would send old bytes to a stranger.
    deploy.chain_identity_check(force=True)
    sender.resend_stale()
    payments.settlements_retry_reverted()
    return indexer.index_events()


@shared_task(name=task_names.SETTLE_PENDING, time_limit=240, soft_time_limit=200,
             acks_late=True, reject_on_worker_lost=True)
def settle_pending() -> str | None:
    """Meter the jobs that stopped and pay them all in one batch transaction."""
    if not settings.ESCROW_ENABLED:
        return None
    deploy.chain_identity_check(force=True)  # no statement goes to a chain without its escrow
    payments.settlements_prepare()
    tx = payments.settlement_batch_send(limit=settings.SETTLEMENT_BATCH_MAX)
    if tx:
        sender.wait(ChainTransaction.objects.get(tx_hash=tx))
        indexer.index_events()
    return tx


@shared_task(name=task_names.DISPUTE_SLASH, bind=True, time_limit=120, soft_time_limit=100,
             acks_late=True, reject_on_worker_lost=True, max_retries=20)
def dispute_slash(self, dispute_id: int) -> str:
    """Slash the provider's stake for a dispute (verification opens them). Safe to run
    twice: the service finds a slash it sent before and the contract refuses a second."""
    if not settings.ESCROW_ENABLED:
        return "escrow_off"
    try:
        return staking.dispute_slash(dispute_id=dispute_id).status
    except ChainError as exc:
        if exc.code in ("chain_unavailable", "not_confirmed"):  # transient: the node or the receipt
            raise self.retry(exc=exc, countdown=10) from exc
        raise
