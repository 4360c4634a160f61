"""A job's money moving as the chain indexer applies it (services/escrow_events.py), for
tests that watch the Account page and the header balance follow: the events' services run
for real; only the chain's side (the transactions themselves) is left out."""

import secrets
from decimal import Decimal

from django.db import transaction

from marketplace.models import Escrow, Job, Settlement, Wallet
from marketplace.money import to_units
from marketplace.services import escrow_events
from marketplace.services.funding import fund_deadline


def tx() -> str:
    return "0x" + secrets.token_hex(32)


def escrow_funded(job: Job, amount: Decimal) -> Escrow:
    """The job's owner deposited `amount` from its wallet; the indexer saw JobFunded."""
    wallet = Wallet.objects.filter(organization=job.owner).first() or Wallet.objects.create(
        organization=job.owner, address="0x" + secrets.token_hex(20), kind=Wallet.Kind.EXTERNAL)
    escrow = Escrow.objects.create(job=job, key=tx(), status=Escrow.Status.FUNDING, fund_tx=tx())
    with transaction.atomic():
        escrow_events.escrow_funded(key=escrow.key, consumer=wallet.address, amount=to_units(amount),
                                    deadline=fund_deadline(job), tx_hash=escrow.fund_tx)
    return Escrow.objects.get(pk=escrow.pk)


def escrow_settled(job: Job, *, charged: Decimal, fee: Decimal) -> Settlement:
    """The job's work was metered (a pending settlement) and the batch settled it on chain:
    `charged` (the fee included) to the providers and the platform, the rest back."""
    escrow = Escrow.objects.get(job=job)
    settlement = Settlement.objects.create(job=job, charged=charged, fee=fee,
                                           refunded=escrow.amount - charged)
    with transaction.atomic():
        escrow_events.escrow_closed(key=escrow.key, refunded=False, paid=to_units(charged - fee),
                                    fee=to_units(fee), returned=to_units(escrow.amount - charged),
                                    tx_hash=tx())
    settlement.refresh_from_db()
    return settlement
