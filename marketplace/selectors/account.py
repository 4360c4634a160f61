"""An organization's money, read: its balances, the history of every movement (funding,
top-ups, settlements, refunds, earnings, faucet grants, stake and slashes) with its
transaction and its job, and the statements built from them (marketplace/statements.py
renders them as CSV and PDF).

Each movement says how it changed what the organization can spend (`available`: its
wallets' tUSD plus what the escrow contract credits it, to withdraw) and what it holds in
escrow (`escrow`), so that the history adds up to the balances."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q, Sum

from ..chain.deploy import escrow_contract, token_contract
from ..models import (
    ConsumerDispute,
    Escrow,
    FaucetGrant,
    Job,
    Organization,
    Payout,
    Settlement,
    StakeEvent,
    StakeOperation,
)
from ..money import from_units, tusd
from .payments import tx_url

log = logging.getLogger(__name__)
E = Escrow.Status
ZERO = Decimal(0)


@dataclass
class Movement:
    """One money movement of an organization."""

    at: datetime
    # faucet, deposit, top_up, charged, refund, earning, stake, unstake, slash, dispute_refund
    kind: str
    label: str
    amount: Decimal | None
    available: Decimal = ZERO   # change of what the organization can spend
    escrow: Decimal = ZERO      # change of what it holds in escrow
    job_id: int | None = None
    job_name: str = ""
    job_is_own: bool = False    # the organization's own job (it may open the job page)
    tx_hash: str = ""
    pending: bool = False       # not on the chain yet (waiting for a batch, a funding in flight)

    @property
    def tx_url(self) -> str | None:
        return tx_url(self.tx_hash)

    @property
    def month(self) -> str:
        return f"{self.at:%Y-%m}"


@dataclass
class Balances:
    """What an organization holds. `available`/`wallet`/`credited` come from the chain and
    are None when it does not answer (or the escrow is off)."""

    is_consumer: bool
    is_provider: bool
    wallet: Decimal | None = None       # the tokens in its wallets
    credited: Decimal | None = None     # refunds and earnings the escrow contract holds for it
    escrowed: Decimal = ZERO            # in funded escrows of its jobs
    spent: Decimal = ZERO               # charged for work, settled
    refunded: Decimal = ZERO            # back from escrows (unspent, refunded, disputes)
    earned: Decimal = ZERO              # paid to it as a provider, settled
    earning: Decimal = ZERO             # its share of statements not settled yet
    wallets: list[dict] = field(default_factory=list)

    @property
    def available(self) -> Decimal | None:
        if self.wallet is None or self.credited is None:
            return None
        return self.wallet + self.credited


def _sum(qs, column: str) -> Decimal:
    return qs.aggregate(s=Sum(column))["s"] or ZERO


def _chain_holdings(org: Organization) -> tuple[Decimal | None, Decimal | None, list[dict]]:
    """Each wallet's tokens and escrow credit, read from the chain (None: not readable)."""
    wallets: list[dict[str, Any]] = [
        {"address": w.address, "is_payout": w.is_payout, "is_custodial": w.kind == w.Kind.CUSTODIAL,
         "tokens": None, "credited": None} for w in org.wallets.order_by("created_at", "id")]
    if not settings.ESCROW_ENABLED:
        return None, None, wallets
    try:
        token, escrow = token_contract(), escrow_contract()
        for w in wallets:
            w["tokens"] = from_units(token.functions.balanceOf(w["address"]).call())
            w["credited"] = from_units(escrow.functions.owed(w["address"]).call())
    except Exception as exc:  # a node that does not answer, contracts not deployed: shown as unknown
        log.info("balances of %s not readable from the chain: %s", org.name, exc)
        for w in wallets:
            w["tokens"] = w["credited"] = None
        return None, None, wallets
    return (sum((w["tokens"] for w in wallets), ZERO), sum((w["credited"] for w in wallets), ZERO), wallets)


def account_balances(org: Organization, *, chain: bool = True) -> Balances:
    """The organization's balances; `chain=False` skips the chain reads (the wallet and
    credit stay unknown)."""
    b = Balances(is_consumer=org.is_consumer, is_provider=org.is_provider)
    if chain:
        b.wallet, b.credited, b.wallets = _chain_holdings(org)
    jobs = Job.objects.filter(owner=org)
    b.escrowed = _sum(Escrow.objects.filter(job__in=jobs, status=E.FUNDED), "amount")
    settled = Settlement.objects.filter(job__in=jobs, status=Settlement.Status.SETTLED)
    b.spent = _sum(settled, "charged")
    disputes = ConsumerDispute.objects.filter(organization=org, status=ConsumerDispute.Status.REFUNDED)
    b.refunded = (_sum(settled, "refunded")
                  + _sum(Escrow.objects.filter(job__in=jobs, status=E.REFUNDED), "amount")
                  + _sum(disputes, "refund_amount"))
    payouts = Payout.objects.filter(provider=org)
    b.earned = _sum(payouts.filter(settlement__status=Settlement.Status.SETTLED), "amount")
    b.earning = _sum(payouts.filter(settlement__status__in=(Settlement.Status.PENDING,
                                                            Settlement.Status.SUBMITTED)), "amount")
    return b


def _job_fields(job: Job, org: Organization) -> dict:
    return {"job_id": job.pk, "job_name": job.name, "job_is_own": job.owner_id == org.pk}


def account_movements(org: Organization, *, month: tuple[int, int] | None = None,
                      job: Job | None = None) -> list[Movement]:
    """Every money movement of the organization, newest first; only those of `month`
    ((year, month), UTC) or of `job` when given."""
    own_jobs = Job.objects.filter(owner=org)
    if job is not None:
        own_jobs = own_jobs.filter(pk=job.pk)
    out: list[Movement] = []
    if job is None:
        out.extend(_faucet_movements(org))
    out.extend(_escrow_movements(org, own_jobs))
    out.extend(_settlement_movements(org, own_jobs))
    out.extend(_payout_movements(org, job))
    out.extend(_dispute_refund_movements(org, job))
    if job is None:
        out.extend(_stake_movements(org))
    out.sort(key=lambda m: (m.at, m.kind), reverse=True)
    if month is not None:
        year, mon = month
        out = [m for m in out if m.at.astimezone(UTC).year == year and m.at.astimezone(UTC).month == mon]
    return out


def _faucet_movements(org: Organization) -> list[Movement]:
    out = []
    for g in FaucetGrant.objects.filter(organization=org).select_related("transaction"):
        out.append(Movement(at=g.created_at, kind="faucet", label="Test tUSD from the faucet",
                            amount=g.amount, available=g.amount,
                            tx_hash=g.transaction.tx_hash if g.transaction else "",
                            pending=g.transaction is None or g.transaction.status in ("signed", "sent")))
    return out


def _escrow_movements(org: Organization, own_jobs) -> list[Movement]:
    """Deposits into the escrows of the organization's jobs, their top-ups and the refunds
    of escrows closed without a settlement."""
    out = []
    for escrow in Escrow.objects.filter(job__in=own_jobs).exclude(fund_tx="").select_related("job"):
        j = escrow.job
        if escrow.status == E.FUNDING:
            out.append(Movement(at=j.status_changed_at, kind="deposit",
                                label="Deposit into the job's escrow (on its way)", amount=j.budget,
                                tx_hash=escrow.fund_tx, pending=True, **_job_fields(j, org)))
            continue
        if escrow.status == E.UNFUNDED:
            continue
        topped = bool(escrow.top_up_tx)
        out.append(Movement(at=escrow.funded_at or j.created_at, kind="deposit",
                            label="Deposit into the job's escrow" + (" (with its top-up)" if topped else ""),
                            amount=escrow.amount, available=-escrow.amount, escrow=escrow.amount,
                            tx_hash=escrow.fund_tx, **_job_fields(j, org)))
        if topped:
            out.append(Movement(at=escrow.funded_at or j.created_at, kind="top_up",
                                label="Top-up of the job's escrow (included in the deposit)", amount=None,
                                tx_hash=escrow.top_up_tx, **_job_fields(j, org)))
        if escrow.status == E.REFUNDED and not Settlement.objects.filter(
                job=j, status=Settlement.Status.SETTLED).exists():
            out.append(Movement(at=escrow.closed_at or escrow.funded_at or j.created_at, kind="refund",
                                label="Escrow refunded"
                                + (" (its chain was lost)" if escrow.lost_reason else ""),
                                amount=escrow.amount, available=escrow.amount, escrow=-escrow.amount,
                                tx_hash=escrow.close_tx, **_job_fields(j, org)))
    return out


def _settlement_movements(org: Organization, own_jobs) -> list[Movement]:
    """What the organization's jobs were charged at settlement and the unspent escrow back."""
    out = []
    for s in Settlement.objects.filter(job__in=own_jobs).select_related("job", "transaction"):
        j, pending = s.job, s.status != Settlement.Status.SETTLED
        if s.status == Settlement.Status.SKIPPED:
            continue
        at = s.settled_at or s.created_at
        tx = s.transaction.tx_hash if s.transaction else ""
        out.append(Movement(at=at, kind="charged",
                            label=f"Paid for the work (platform fee {tusd(s.fee)} included)",
                            amount=s.charged, escrow=ZERO if pending else -s.charged, tx_hash=tx,
                            pending=pending, **_job_fields(j, org)))
        if s.refunded > 0:
            out.append(Movement(at=at, kind="refund", label="Unspent escrow back to you", amount=s.refunded,
                                available=ZERO if pending else s.refunded,
                                escrow=ZERO if pending else -s.refunded, tx_hash=tx, pending=pending,
                                **_job_fields(j, org)))
    return out


def _payout_movements(org: Organization, job: Job | None) -> list[Movement]:
    """The organization's earnings as a provider (of `job` only when given)."""
    payouts = Payout.objects.filter(provider=org).select_related("settlement__job", "settlement__transaction")
    if job is not None:
        payouts = payouts.filter(settlement__job=job)
    out = []
    for p in payouts:
        s = p.settlement
        if s.status == Settlement.Status.SKIPPED:
            continue
        pending = s.status != Settlement.Status.SETTLED
        out.append(Movement(at=s.settled_at or s.created_at, kind="earning",
                            label="Earned for work done (after the platform fee)", amount=p.amount,
                            available=ZERO if pending else p.amount,
                            tx_hash=s.transaction.tx_hash if s.transaction else "", pending=pending,
                            **_job_fields(s.job, org)))
    return out


def _dispute_refund_movements(org: Organization, job: Job | None) -> list[Movement]:
    disputes = ConsumerDispute.objects.filter(organization=org, status=ConsumerDispute.Status.REFUNDED)
    if job is not None:
        disputes = disputes.filter(job=job)
    return [Movement(at=d.resolved_at or d.created_at, kind="dispute_refund",
                     label=f"Refund for dispute #{d.pk}", amount=d.refund_amount,
                     available=d.refund_amount or ZERO, tx_hash=d.refund_tx, **_job_fields(d.job, org))
            for d in disputes.select_related("job")]


def _stake_movements(org: Organization) -> list[Movement]:
    out = []
    for op in StakeOperation.objects.filter(organization=org).select_related("transaction"):
        if op.kind == StakeOperation.Kind.REQUEST_WITHDRAWAL:
            continue
        staking = op.kind == StakeOperation.Kind.STAKE
        amount = op.amount
        out.append(Movement(at=op.created_at, kind="stake" if staking else "unstake",
                            label="Staked" if staking else "Stake withdrawn", amount=amount,
                            available=(-(amount or ZERO) if staking else (amount or ZERO)),
                            tx_hash=op.transaction.tx_hash,
                            pending=op.transaction.status in ("signed", "sent")))
    for ev in StakeEvent.objects.filter(stake__organization=org, kind=StakeEvent.Kind.SLASHED):
        out.append(Movement(at=ev.created_at, kind="slash",
                            label="Stake slashed"
                            + (f" for dispute #{ev.dispute_id}" if ev.dispute_id else ""),
                            amount=ev.amount, tx_hash=ev.tx_hash))
    return out


def account_months(org: Organization) -> list[str]:
    """The months ("YYYY-MM") that have movements, newest first, for the statement links."""
    return sorted({m.month for m in account_movements(org)}, reverse=True)


def job_statement_of(org: Organization, job: Job) -> dict:
    """One job's statement for its owner: deposits, the metered lines, what was charged,
    the fee, each provider's payout, the refund, and the transactions."""
    settlement = Settlement.objects.filter(job=job).select_related("transaction").first()
    escrow = Escrow.objects.filter(job=job).first()
    payouts = list(settlement.payouts.select_related("provider")) if settlement else []
    return {
        "job": job, "organization": org, "escrow": escrow, "settlement": settlement,
        "lines": settlement.statement if settlement else [],
        "payouts": payouts,
        "movements": account_movements(org, job=job),
    }


def jobs_with_statement(org: Organization):
    """The organization's jobs that have a statement (settled, or with a settlement)."""
    return (Job.objects.filter(owner=org).filter(Q(settlement__isnull=False) | Q(escrow__status=E.REFUNDED))
            .order_by("-created_at"))


def job_disputes(job: Job):
    """The consumer's disputes of `job`, newest first (the caller checks who may see them)."""
    return ConsumerDispute.objects.filter(job=job).select_related("opened_by").order_by("-created_at", "-id")
