"""What the escrow's events mean (applied by the indexer through services/chain_events.py;
each is idempotent, since a re-read block range applies it again): `JobFunded` checked
against the signed terms starts matching, `JobToppedUp` may resume a paused job, `JobSettled`
and `JobRefunded` close the job, `SettlementSkipped` says why a batch paid nothing; and a
chain that is gone (chain.deploy.chain_gone) marks its escrows for staff.
"""

import logging
import secrets
from datetime import UTC, datetime

from django.utils import timezone

from .. import job_states
from ..models import Escrow, Job, Settlement, Wallet
from ..money import from_units, tusd
from . import audit, enqueue
from .budget import job_resume_if_covered
from .funding import fund_deadline
from .jobs import job_cancel

log = logging.getLogger(__name__)
S = Job.Status
E = Escrow.Status


def escrow_funded(*, key: str, consumer: str, amount: int, deadline: int, tx_hash: str) -> None:
    """The chain says a job's escrow was funded: start the job if the deposit covers it.
    Only a funding on the job's terms counts: from one of the owner's wallets, with the
    deadline the platform signs. Anything else is foreign (`escrow_foreign_funding`)."""
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None:
        log.warning("JobFunded for unknown escrow %s (tx %s)", key, tx_hash)
        return
    if escrow.status in (E.FUNDED, E.SETTLED, E.REFUNDED):
        return
    job = escrow.job
    if not Wallet.objects.filter(organization=job.owner, address=consumer).exists():
        why = f"{consumer} is not one of {job.owner.name}'s wallets"
    elif deadline != fund_deadline(job):
        why = f"its deadline {deadline} is not the job's {fund_deadline(job)}"
    elif amount <= 0:
        why = "it deposited nothing"
    else:
        why = ""
    if why:
        escrow_foreign_funding(escrow=escrow, consumer=consumer, amount=amount, deadline=deadline,
                               tx_hash=tx_hash, why=why)
        return
    escrow.status, escrow.consumer_address, escrow.amount = E.FUNDED, consumer, from_units(amount)
    escrow.deadline, escrow.fund_tx = datetime.fromtimestamp(deadline, tz=UTC), tx_hash
    escrow.funded_at = timezone.now()
    escrow.save()
    _start_if_covered(escrow)


def escrow_foreign_funding(*, escrow: Escrow, consumer: str, amount: int, deadline: int, tx_hash: str,
                           why: str) -> None:
    """A JobFunded that is not the job's own: never the escrow's consumer, never a top-up
    target. It is recorded for staff (audit trail, the job's timeline) and the job gets a
    fresh key, so that its owner funds on its own terms (the contract refuses a second
    funding of a key). The contract only accepts operator-signed terms, so this means terms
    signed for a wallet the owner no longer holds, or an operator key to rotate."""
    old_key, escrow.key = escrow.key, "0x" + secrets.token_hex(32)
    reset = escrow.status == E.FUNDING  # the owner's funding in flight went to the old key
    if reset:
        escrow.status = E.UNFUNDED
    escrow.save(update_fields=["key", "status"])
    data = {"key": old_key, "consumer": consumer, "amount": str(from_units(amount)), "deadline": deadline,
            "tx": tx_hash, "why": why}
    log.error("foreign JobFunded for job %s: %s (tx %s)", escrow.job_id, why, tx_hash)
    audit.audit_record(actor=None, action="escrow.foreign_funding", obj=escrow.job, data=data,
                       message=f"Ignored a funding of job {escrow.job_id}'s escrow key {old_key} by "
                               f"{consumer} ({tusd(from_units(amount))}, transaction {tx_hash}): {why}.")
    job_states.note(job_id=escrow.job_id, reason="escrow_foreign", data=data,
                    message=f"A funding by {consumer} ({tusd(from_units(amount))}, transaction {tx_hash}) "
                            f"was not this job's ({why}) and is ignored; staff are told. "
                            + ("Fund the job again. " if reset else "") + "The job has a new escrow key.")


def escrow_topped_up(*, key: str, total: int) -> None:
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None or escrow.status != E.FUNDED:
        return
    escrow.amount = from_units(total)
    escrow.save(update_fields=["amount"])
    _start_if_covered(escrow)
    if escrow.job.status == S.PAUSED:
        job_resume_if_covered(job_id=escrow.job_id)


def _start_if_covered(escrow: Escrow) -> None:
    job = escrow.job
    if job.status != S.SUBMITTED:
        return
    if escrow.amount < job.budget:
        job_states.note(job_id=job.pk, reason="underfunded",
                        message=f"The escrow holds {tusd(escrow.amount)} of the {tusd(job.budget)} "
                                "budget; top it up to start the job.")
        return
    job_states.transition(job_id=job.pk, to=S.FUNDED, reason="escrow_funded",
                          message=f"Escrow funded on chain with {tusd(escrow.amount)} "
                                  f"(transaction {escrow.fund_tx}).")
    enqueue.match_job(job.pk)


def escrow_closed(*, key: str, refunded: bool, paid: int, fee: int, returned: int, tx_hash: str) -> None:
    """The chain says a job's escrow was settled or refunded: the job follows."""
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None or escrow.status in (E.SETTLED, E.REFUNDED):
        return
    job = escrow.job
    escrow.status = E.REFUNDED if refunded or (paid == 0 and fee == 0) else E.SETTLED
    escrow.close_tx, escrow.closed_at = tx_hash, timezone.now()
    escrow.save(update_fields=["status", "close_tx", "closed_at"])
    if refunded:
        # The whole deposit went back: a statement still waiting for a batch (or skipped by
        # one) paid nobody, and must not show its payouts as paid.
        Settlement.objects.filter(job=job).exclude(status=Settlement.Status.SETTLED).delete()
    else:
        Settlement.objects.filter(job=job).exclude(status=Settlement.Status.SETTLED).update(
            status=Settlement.Status.SETTLED, settled_at=timezone.now())
    if refunded and job.status in (S.ACTIVE - {S.VERIFYING}) | {S.SUBMITTED}:
        job = job_cancel(job=job, reason="escrow_refunded",
                         message="The escrow was refunded on chain; the job stops.")
    to = S.REFUNDED if escrow.status == E.REFUNDED else S.SETTLED
    text = (f"Refunded {tusd(from_units(returned))} to the consumer" if to == S.REFUNDED else
            f"Settled on chain: {tusd(from_units(paid))} to providers, {tusd(from_units(fee))} "
            f"platform fee, {tusd(from_units(returned))} back to the consumer")
    if job_states.can_transition(Job.objects.get(pk=job.pk).status, to):
        job_states.transition(job_id=job.pk, to=to, reason="escrow_" + to, message=f"{text} ({tx_hash}).")
    else:  # e.g. completed work reclaimed after the deadline: the status stays, the timeline says why
        job_states.note(job_id=job.pk, reason="escrow_" + to, message=f"{text} ({tx_hash}).")


def on_chain_gone(sender, *, reason: str, **kwargs) -> None:
    """chain.deploy.chain_gone's receiver (apps.py)."""
    escrows_chain_lost(reason=reason)


def escrows_chain_lost(*, reason: str) -> int:
    """The chain that held the deposits is gone (`chain.deploy.chain_lost`): each funded,
    unsettled escrow is marked `chain_lost` with the reason and says so on its job's
    timeline, for staff to resolve (`escrow_lost_refund`); its statement, if any, waits
    again (the batch that carried it went to the lost chain, and no batch takes a lost
    escrow). A funding in flight is forgotten: the consumer funds again on the new chain.
    Idempotent: marked escrows are not marked again. Returns how many were marked."""
    marked = 0
    for escrow in (Escrow.objects.select_for_update().select_related("job")
                   .filter(status__in=(E.FUNDED, E.FUNDING)).order_by("pk")):
        if escrow.status == E.FUNDING:
            Escrow.objects.filter(pk=escrow.pk).update(status=E.UNFUNDED)
            job_states.note(job_id=escrow.job_id, reason="funding_lost", data={"reason": reason},
                            message=f"The funding transaction {escrow.fund_tx} went to a chain that is gone "
                                    f"({reason}); fund the job again.")
            continue
        Escrow.objects.filter(pk=escrow.pk).update(status=E.CHAIN_LOST, lost_reason=reason[:300])
        Settlement.objects.filter(job_id=escrow.job_id, status=Settlement.Status.SUBMITTED).update(
            status=Settlement.Status.PENDING, transaction=None)
        job_states.note(job_id=escrow.job_id, reason="chain_lost", data={"reason": reason},
                        message=f"The escrow's chain is gone: {reason}. Its {tusd(escrow.amount)} deposit "
                                f"(transaction {escrow.fund_tx}) was neither paid out nor refunded there; "
                                "staff will refund it.")
        marked += 1
    if marked:
        log.error("chain lost (%s): %d funded escrows marked chain_lost", reason, marked)
    return marked


def escrow_settlement_skipped(*, key: str, state: int, tx_hash: str) -> None:
    """The contract skipped a job in a settlement batch: the escrow was not funded on chain
    (0 no such escrow, 2 already settled, 3 refunded). Recorded on the statement and the
    timeline, once per transaction. An escrow the chain does not know while we hold it
    funded means its chain is not this one: it is marked chain_lost so that no batch
    carries it again."""
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None:
        log.warning("SettlementSkipped for unknown escrow %s (tx %s)", key, tx_hash)
        return
    if escrow.job.events.filter(reason="settlement_skipped", data__tx=tx_hash).exists():
        return
    names = {0: "unknown to the contract", 1: "funded", 2: "already settled", 3: "already refunded"}
    Settlement.objects.filter(job=escrow.job).exclude(status=Settlement.Status.SETTLED).update(
        status=Settlement.Status.SKIPPED, skipped_state=state)
    job_states.note(job_id=escrow.job_id, reason="settlement_skipped", data={"tx": tx_hash, "state": state},
                    message=f"The escrow contract skipped this job's settlement (transaction {tx_hash}): "
                            f"its escrow is {names.get(state, f'in state {state}')} on chain.")
    if state == 0 and escrow.status == E.FUNDED:
        reason = f"the settlement transaction {tx_hash} found no escrow for this job on the chain"
        escrow.status, escrow.lost_reason = E.CHAIN_LOST, reason
        escrow.save(update_fields=["status", "lost_reason"])
        job_states.note(job_id=escrow.job_id, reason="chain_lost", data={"reason": reason},
                        message=f"The chain does not hold this job's escrow ({reason}); its "
                                f"{tusd(escrow.amount)} deposit waits for staff to refund it.")
