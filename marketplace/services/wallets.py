"""Wallets: custodial development wallets (the platform holds an encrypted key) and
payout addresses."""

import base64
import hashlib

from cryptography.fernet import Fernet
from django.conf import settings
from django.db import transaction
from eth_account import Account

from ..errors import Conflict, MarketError
from ..models import Organization, Wallet

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
    from ..chain.deploy import is_dev_chain

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
    wallet = organization.wallets.filter(is_payout=True).first()
    return wallet.address if wallet else None


def wallet_set_payout(*, wallet: Wallet) -> Wallet:
    with transaction.atomic():
        Wallet.objects.filter(organization=wallet.organization_id, is_payout=True).update(is_payout=False)
        Wallet.objects.filter(pk=wallet.pk).update(is_payout=True)
    wallet.refresh_from_db()
    return wallet
