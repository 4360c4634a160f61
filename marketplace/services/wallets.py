"""Wallets: custodial development wallets (the platform holds an encrypted key), wallets
users link by Sign-In with Ethereum (EIP-4361), and payout addresses."""

import base64
import hashlib
import secrets
import warnings
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from eth_account import Account
from eth_utils import to_checksum_address

from ..chain.client import ChainError, chain_id
from ..chain.deploy import give_gas, is_dev_chain, mint_to, token_contract
from ..errors import Conflict, MarketError, PermissionDenied
from ..models import Membership, Organization, PayoutChange, SiweNonce, Wallet
from ..money import from_units, to_units
from ..selectors.accounts import organization_of
from . import audit

W = Wallet.Kind


def _fernet() -> Fernet:
    key = settings.WALLET_ENCRYPTION_KEY
    if not key:
        digest = hashlib.sha256(b"computemesh wallets\0" + settings.SECRET_KEY.encode()).digest()
        key = base64.urlsafe_b64encode(digest).decode()
    return Fernet(key)


def wallet_create_custodial(*, organization: Organization) -> Wallet:
    """A development wallet whose key the platform keeps, encrypted at rest. Only on a
    development chain: on a real one, organizations link their own wallets."""
    if not is_dev_chain():
        raise MarketError("Custodial wallets exist only on development chains; link your own wallet.",
                          code="not_dev_chain")
    account = Account.create()
    with transaction.atomic():
        has_payout = organization.wallets.filter(is_payout=True).exists()
        return Wallet.objects.create(
            organization=organization, address=account.address, kind=W.CUSTODIAL,
            encrypted_key=_fernet().encrypt(account.key.hex().encode()).decode(),
            is_payout=not has_payout)


def custodial_key(wallet: Wallet) -> str:
    if wallet.kind != W.CUSTODIAL or not wallet.encrypted_key:
        raise Conflict("The platform does not hold this wallet's key.")
    return "0x" + _fernet().decrypt(wallet.encrypted_key.encode()).decode().removeprefix("0x")


def custodial_wallet(organization: Organization) -> Wallet:
    wallet = organization.wallets.filter(kind=W.CUSTODIAL).order_by("created_at").first()
    if wallet is None:
        raise Conflict("This organization has no custodial wallet; fund the job from your own wallet "
                       "in the browser.", code="no_custodial_wallet")
    return wallet


def payout_address(organization: Organization) -> str | None:
    """Where the organization is paid now: a requested change counts once its delay is over."""
    payout_changes_apply(organization=organization)
    wallet = organization.wallets.filter(is_payout=True).first()
    return wallet.address if wallet else None


def is_org_admin(user, organization: Organization) -> bool:
    member = getattr(user, "membership", None) if getattr(user, "is_authenticated", False) else None
    return (member is not None and member.organization_id == organization.pk
            and member.role in (Membership.Role.OWNER, Membership.Role.ADMIN))


def payout_change_pending(organization: Organization) -> PayoutChange | None:
    """The change of payout wallet waiting for its delay, if any (announced on the pages)."""
    return (PayoutChange.objects.filter(organization=organization, applied_at__isnull=True,
                                        cancelled_at__isnull=True)
            .select_related("wallet", "previous", "requested_by").first())


def wallet_set_payout(*, wallet: Wallet, actor) -> PayoutChange | None:
    """An organization admin asks to be paid to `wallet`. With no payout wallet yet it is
    set at once (nothing to redirect); otherwise the change waits PAYOUT_CHANGE_DELAY_S,
    announced on the provider's pages, and settlements until then pay the old wallet: a
    stolen session or a rogue member cannot redirect the pay for work already done before
    the admins notice. Asking for the current payout wallet cancels a pending change.
    Audited. Returns the pending change (None when nothing is pending). Idempotent: asking
    again for the wallet already pending returns that change, its clock not restarted."""
    org = wallet.organization
    if not is_org_admin(actor, org):
        raise PermissionDenied("Only an admin of your organization can change where it is paid.")
    now = timezone.now()
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org.pk).first()  # one change at a time
        payout_changes_apply(organization=org, now=now)
        current = org.wallets.filter(is_payout=True).first()
        pending = payout_change_pending(org)
        who = actor.get_username()
        if current is None:
            _payout_switch(org, wallet)
            audit.audit_record(actor=actor, action="wallet.payout_set", obj=org,
                               data={"address": wallet.address},
                               message=f"{who} made {wallet.address} the payout wallet (there was none).")
            return None
        if pending is not None and pending.wallet_id == wallet.pk:
            return pending
        if pending is not None:
            PayoutChange.objects.filter(pk=pending.pk).update(cancelled_at=now)
            audit.audit_record(actor=actor, action="wallet.payout_change_cancelled", obj=org,
                               data={"address": pending.wallet.address},
                               message=f"{who} cancelled the pending payout change to "
                                       f"{pending.wallet.address}.")
        if current.pk == wallet.pk:
            return None
        change = PayoutChange.objects.create(
            organization=org, wallet=wallet, previous=current, requested_by=actor,
            effective_at=now + timedelta(seconds=settings.PAYOUT_CHANGE_DELAY_S))
        audit.audit_record(actor=actor, action="wallet.payout_change_requested", obj=org,
                           data={"address": wallet.address, "previous": current.address,
                                 "effective_at": change.effective_at.isoformat()},
                           message=f"{who} asked for payouts to go to {wallet.address} instead of "
                                   f"{current.address} from {change.effective_at.isoformat()}.")
    return change


def _payout_switch(org: Organization, wallet: Wallet) -> None:
    Wallet.objects.filter(organization=org.pk, is_payout=True).exclude(pk=wallet.pk).update(is_payout=False)
    Wallet.objects.filter(pk=wallet.pk).update(is_payout=True)


def payout_changes_apply(*, organization: Organization | None = None, now=None) -> int:
    """Changes whose delay is over take effect (each once: claimed by compare-and-set).
    Called before anything reads the payout wallet, so no periodic task is needed."""
    now = now or timezone.now()
    due = PayoutChange.objects.filter(applied_at__isnull=True, cancelled_at__isnull=True,
                                      effective_at__lte=now).select_related("wallet", "organization")
    if organization is not None:
        due = due.filter(organization=organization)
    applied = 0
    for change in due:
        with transaction.atomic():
            if not PayoutChange.objects.filter(pk=change.pk, applied_at__isnull=True,
                                               cancelled_at__isnull=True).update(applied_at=now):
                continue
            _payout_switch(change.organization, change.wallet)
            audit.audit_record(actor=None, action="wallet.payout_changed", obj=change.organization,
                               data={"address": change.wallet.address, "change": change.pk},
                               message=f"Payouts now go to {change.wallet.address} (asked for on "
                                       f"{change.requested_at.isoformat()}).")
            applied += 1
    return applied


# --- Sign-In with Ethereum (EIP-4361): linking a wallet the user holds ------------------
SIWE_STATEMENT = "Link this wallet to your organization on ComputeMesh."


def siwe_nonce_issue(*, user) -> SiweNonce:
    """A fresh nonce for one SIWE message of `user`: valid once, for SIWE_NONCE_TTL_S."""
    now = timezone.now()
    # The user's stale nonces go; used ones are kept a day as the record of replays refused.
    SiweNonce.objects.filter(user=user, expires_at__lt=now - timedelta(days=1)).delete()
    return SiweNonce.objects.create(user=user, nonce=secrets.token_hex(16),
                                    expires_at=now + timedelta(seconds=settings.SIWE_NONCE_TTL_S))


def _siwe_parse(message: str):
    with warnings.catch_warnings():  # abnf warns about siwe's grammar on first use
        warnings.simplefilter("ignore")
        import siwe  # here, not at the top: importing it is what triggers abnf's warning

        try:
            return siwe, siwe.SiweMessage.from_message(message=message)
        except Exception as exc:  # abnf's ParseError, pydantic's ValidationError, ValueError
            raise MarketError("The message is not a Sign-In with Ethereum (EIP-4361) message: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}.",
                              field="message", code="malformed_message") from None


def wallet_link(*, user, message: str, signature: str, domain: str) -> tuple[Wallet, bool]:
    """Link the wallet that signed `message` (EIP-4361, for `domain`, the host the user is on)
    to the user's organization. Checks the domain, the URI, the chain, the nonce (issued to
    this user, unused, unexpired: then used up), the message's validity window and the
    signature. The first wallet a provider links becomes its payout wallet. Returns the
    wallet and whether it is new (linking a wallet the organization has is a no-op)."""
    org = organization_of(user)
    if org is None:
        raise PermissionDenied("Join or create an organization before linking a wallet.")
    siwe, msg = _siwe_parse(message or "")
    if msg.domain != domain:
        raise MarketError(f"The message is for {msg.domain}, not {domain}: sign it on this site.",
                          field="message", code="wrong_domain")
    uri = urlsplit(str(msg.uri))
    if uri.scheme not in ("http", "https") or uri.netloc != domain:
        raise MarketError(f"The message's URI {msg.uri} is not on {domain}.", field="message",
                          code="wrong_uri")
    if msg.chain_id != chain_id():
        raise MarketError(f"The message is for chain {msg.chain_id}; this platform runs on chain "
                          f"{chain_id()}.", field="message", code="wrong_chain")
    with transaction.atomic():
        nonce = SiweNonce.objects.select_for_update().filter(nonce=msg.nonce, user=user).first()
        if nonce is None:
            raise MarketError("The message's nonce was not issued to you; ask for a new one.",
                              field="message", code="unknown_nonce")
        if nonce.used_at is not None:
            raise MarketError("This message was used already (its nonce is spent); sign a new one.",
                              field="message", code="nonce_used")
        if nonce.expires_at <= timezone.now():
            raise MarketError("The nonce has expired; ask for a new one and sign again.",
                              field="message", code="nonce_expired")
        try:
            msg.verify(signature or "", domain=domain, nonce=nonce.nonce)
        except siwe.ExpiredMessage:
            raise MarketError("The message has expired (its Expiration Time has passed); sign a new "
                              "one.", field="message", code="message_expired") from None
        except siwe.NotYetValidMessage:
            raise MarketError("The message is not valid yet (Not Before is in the future).",
                              field="message", code="message_not_yet_valid") from None
        except siwe.VerificationError:
            raise MarketError(f"The signature is not {msg.address}'s signature of this message.",
                              field="signature", code="bad_signature") from None
        address = to_checksum_address(msg.address)
        existing = Wallet.objects.filter(address=address).first()
        if existing is not None and existing.organization_id != org.pk:
            raise Conflict(f"The wallet {address} is linked to another organization; unlink it "
                           "there first.", code="wallet_taken")
        nonce.used_at = timezone.now()
        nonce.save(update_fields=["used_at"])
        if existing is not None:
            return existing, False
        first_external = not org.wallets.filter(kind=W.EXTERNAL).exists()
        wallet = Wallet.objects.create(organization=org, address=address, kind=W.EXTERNAL,
                                       linked_by=user)
        # The first wallet a provider links (or one linked while it has no payout wallet)
        # is proposed as its payout wallet only when an admin links it, and then with the
        # same delay as any other change (at once when there was none).
        unpaid = not org.wallets.filter(is_payout=True).exists()
        if org.is_provider and (first_external or unpaid) and is_org_admin(user, org):
            wallet_set_payout(wallet=wallet, actor=user)
            wallet.refresh_from_db()
        audit.audit_record(actor=user, action="wallet.link", obj=org, data={"address": address},
                           message=f"{user.get_username()} linked the wallet {address} by "
                                   "Sign-In with Ethereum.")
    return wallet, True


def dev_wallets(*, mint, provider_mint=Decimal(0)) -> list[str]:
    """Development chains: every organization gets a custodial wallet, gas, consumers tUSD
    up to `mint` and providers up to `provider_mint` (to stake)."""
    if not is_dev_chain():
        raise ChainError("Development wallets exist only on development chains.", code="not_dev_chain")
    out = []
    token = token_contract()
    for org in Organization.objects.order_by("pk"):
        wallet = org.wallets.filter(kind="custodial").first() or wallet_create_custodial(organization=org)
        give_gas(wallet.address)
        want = mint if org.is_consumer else provider_mint
        if want > 0:
            held = token.functions.balanceOf(wallet.address).call()
            if held < to_units(want):
                mint_to(wallet.address, want - from_units(held))
        out.append(f"{org.name}: {wallet.address}")
    return out
