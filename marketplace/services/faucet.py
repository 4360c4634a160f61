"""The development faucet: test tUSD for an organization's custodial wallet, so that a new
organization can pay for a job in the demo without anyone minting for it by hand.

Development chains only (`chain.deploy.is_dev_chain`, and only our own test token): on a
real chain the settlement token is money and is refused here with what to do instead.
Bounded: the wallet is topped up to FAUCET_AMOUNT (never beyond), at most once every
FAUCET_INTERVAL_S per organization, one claim at a time (the organization's row is locked),
so repeated clicks mint nothing more."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..chain import sender
from ..chain.client import ChainError, unavailable
from ..chain.deploy import give_gas, is_dev_chain, operator_key, token_contract
from ..errors import Conflict, MarketError
from ..models import FaucetGrant, Organization, Wallet
from ..money import from_units, to_units, tusd
from . import audit, live
from .wallets import wallet_create_custodial

log = logging.getLogger(__name__)


def faucet_available() -> bool:
    """Whether the faucet can be offered here (no chain call when the escrow is off)."""
    if not settings.ESCROW_ENABLED or settings.CHAIN_TOKEN_ADDRESS:
        return False
    try:
        return is_dev_chain()
    except ChainError:
        return False


def _refuse_unless_dev_chain() -> None:
    if not settings.ESCROW_ENABLED:
        raise Conflict("Payments are off on this platform: jobs run without funding, no test tUSD "
                       "is needed.", code="escrow_disabled")
    if settings.CHAIN_TOKEN_ADDRESS or not is_dev_chain():
        raise Conflict("The faucet exists only on development chains: this platform settles in a real "
                       "token. Link your own wallet (Wallets page) and fund jobs from it.",
                       code="not_dev_chain")


def custodial_wallet_ensure(*, organization: Organization) -> Wallet:
    """The organization's custodial development wallet, created on first use."""
    wallet = organization.wallets.filter(kind=Wallet.Kind.CUSTODIAL).order_by("created_at").first()
    return wallet or wallet_create_custodial(organization=organization)


def custodial_wallet_for_new_organization(*, organization: Organization) -> Wallet | None:
    """A new organization gets its development wallet at once where the faucet works (the
    Account page then shows its address and the faucet button); elsewhere, or while the
    chain does not answer, none (the faucet creates it on first use)."""
    if not faucet_available():
        return None
    try:
        return custodial_wallet_ensure(organization=organization)
    except ChainError as exc:
        log.warning("no development wallet for %s yet: %s", organization.name, exc.message)
        return None


def faucet_next_at(organization: Organization):
    """When the organization may use the faucet again (None: now)."""
    last = FaucetGrant.objects.filter(organization=organization).order_by("-created_at").first()
    if last is None:
        return None
    at = last.created_at + timedelta(seconds=settings.FAUCET_INTERVAL_S)
    return at if at > timezone.now() else None


def faucet_claim(*, organization: Organization, actor=None) -> FaucetGrant:
    """Top the organization's custodial wallet up to FAUCET_AMOUNT test tUSD (and give it gas),
    creating the wallet if it has none. Refused (Conflict, with the reason) on a real chain,
    while the last claim is younger than FAUCET_INTERVAL_S, or when the wallet already holds
    the amount. Returns the grant once its mint is mined."""
    _refuse_unless_dev_chain()
    if organization.is_suspended:
        raise MarketError("Your organization is suspended; contact support.", code="suspended")
    target = settings.FAUCET_AMOUNT
    with transaction.atomic():
        # One claim at a time per organization: a double click waits here, then is refused.
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
        next_at = faucet_next_at(organization)
        if next_at is not None:
            raise Conflict(f"Your organization received test tUSD less than "
                           f"{faucet_interval_text()} ago; the faucet gives again from "
                           f"{next_at:%Y-%m-%d %H:%M} UTC.", code="faucet_rate_limited")
        wallet = custodial_wallet_ensure(organization=organization)
        token = token_contract()
        try:
            held = from_units(token.functions.balanceOf(wallet.address).call())
            give_gas(wallet.address)
        except Exception as exc:  # the node does not answer: a 503, never a 500
            raise unavailable(exc) from exc
        if held >= target:
            raise Conflict(f"The development wallet {wallet.address} holds {tusd(held)} already; the "
                           f"faucet tops it up to {tusd(target)}.", code="faucet_not_needed")
        amount = target - held
        tx = sender.send(key=operator_key(), purpose="mint",
                         call=token.functions.mint(wallet.address, to_units(amount)))
        grant = FaucetGrant.objects.create(organization=organization, wallet=wallet, amount=amount,
                                           transaction=tx,
                                           requested_by=actor if getattr(actor, "is_authenticated", False)
                                           else None)
        audit.audit_record(actor=actor, action="faucet.claim", obj=organization,
                           data={"amount": str(amount), "address": wallet.address, "tx": tx.tx_hash},
                           message=f"Faucet: {tusd(amount)} test tUSD to {wallet.address}.")
    # Broadcast on commit; waiting here means the balance the next page shows includes it.
    try:
        sender.wait(tx)
    except ChainError as exc:  # mined later: the Account page shows the transaction's state
        log.warning("faucet mint %s not confirmed yet: %s", tx.tx_hash, exc.message)
    # After the wait: the refreshed balance then includes the mint.
    live.account_changed([organization.pk])
    log.info("faucet: %s tUSD to %s (%s)", amount, wallet.address, tx.tx_hash)
    return grant


def faucet_interval_text() -> str:
    seconds = settings.FAUCET_INTERVAL_S
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
