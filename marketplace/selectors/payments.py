"""Read models of payments: a job's escrow and statement, a provider's payouts, an
organization's wallets."""

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse

from ..models import ChainTransaction, Escrow, Job, Organization, Payout, Wallet
from .accounts import organization_of


def tx_url(tx_hash: str) -> str | None:
    """Where a transaction can be looked at: the configured explorer, else our own page."""
    if not tx_hash:
        return None
    if settings.CHAIN_EXPLORER_TX_URL:
        return settings.CHAIN_EXPLORER_TX_URL.format(hash=tx_hash)

    return reverse("chain-tx", args=[tx_hash])


def job_escrow(job: Job) -> dict | None:
    """The job's escrow as the API and the job page show it (None: escrow is off)."""
    if not settings.ESCROW_ENABLED:
        return None
    escrow = Escrow.objects.filter(job=job).first()
    out: dict[str, Any] = {"status": escrow.status if escrow else Escrow.Status.UNFUNDED,
           "status_display": (escrow.get_status_display() if escrow else Escrow.Status.UNFUNDED.label),
           "amount": str(escrow.amount) if escrow else "0.000000", "budget": str(job.budget),
           "job_key": escrow.key if escrow else None,
           "consumer_address": escrow.consumer_address if escrow else "",
           "deadline": escrow.deadline.isoformat() if escrow and escrow.deadline else None,
           "lost_reason": escrow.lost_reason if escrow else "",
           "transactions": [], "statement": None}
    if escrow is None:
        return out
    for label, tx in (("fund", escrow.fund_tx), ("close", escrow.close_tx)):
        if tx:
            out["transactions"].append({"kind": label, "hash": tx, "url": tx_url(tx)})
    settlement = getattr(job, "settlement", None) if hasattr(job, "settlement") else None
    if settlement is not None:
        tx = settlement.transaction
        out["statement"] = {
            "status": settlement.status, "charged": str(settlement.charged), "fee": str(settlement.fee),
            "refunded": str(settlement.refunded), "lines": settlement.statement,
            "payouts": [{"provider": p.provider.name, "address": p.address, "amount": str(p.amount)}
                        for p in settlement.payouts.select_related("provider")],
            "transaction": tx.tx_hash if tx is not None else None,
        }
        if tx is not None and tx.tx_hash != escrow.close_tx:
            out["transactions"].append({"kind": "settle", "hash": tx.tx_hash, "url": tx_url(tx.tx_hash)})
    return out


def provider_payouts(org: Organization, limit: int = 50) -> list[dict]:
    rows = (Payout.objects.filter(provider=org).select_related("settlement__job", "settlement__transaction")
            .order_by("-settlement__created_at")[:limit])
    return [_payout_row(p) for p in rows]


def _payout_row(p: Payout) -> dict:
    tx = p.settlement.transaction  # select_related above: no query
    return {"job": p.settlement.job_id, "job_name": p.settlement.job.name, "amount": p.amount,
            "address": p.address, "status": p.settlement.get_status_display(),
            "tx": tx.tx_hash if tx is not None else "",
            "tx_url": tx_url(tx.tx_hash) if tx is not None else None,
            "at": p.settlement.settled_at or p.settlement.created_at}


def chain_transaction(tx_hash: str) -> ChainTransaction | None:
    """The platform's transaction with this hash: the one on the current chain, else the
    latest sent on a chain that is gone (the same signed bytes can be sent on both)."""
    return (ChainTransaction.objects.filter(tx_hash=tx_hash, lost_reason="").first()
            or ChainTransaction.objects.filter(tx_hash=tx_hash).first())


def wallets_of(user) -> QuerySet[Wallet]:
    """The wallets of the user's organization (none without one)."""

    org = organization_of(user)
    if org is None:
        return Wallet.objects.none()
    return Wallet.objects.filter(organization=org).select_related("linked_by").order_by("created_at", "id")
