"""Deploying the contracts, development accounts' gas and tUSD, and the chain's identity.

Roles (docs/operations.md, "Chain keys"): the operator key signs funding terms, settlements
and refunds; the admin (CHAIN_ADMIN_ADDRESS) grants and revokes roles; the pauser
(CHAIN_PAUSER_ADDRESS) pauses; the fee goes to the treasury (CHAIN_TREASURY_ADDRESS). On a
development chain (the in-process EVM, or a local node with unlocked accounts) an empty
CHAIN_OPERATOR_KEY means a fixed development key, and the operator also administers and
pauses, with the fee credited to a development address; `check --deploy` refuses all of it
(the development keys are public), and `deploy` refuses any other chain without them.
"""

import time

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.dispatch import Signal
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from ..models import (
    ChainAccount,
    ChainContract,
    ChainCursor,
    ChainTransaction,
    DisputeSlash,
    Offer,
    ProviderStake,
    StakeOperation,
)
from ..money import to_units
from . import sender, terms
from .client import ChainError, chain_id, contract, unavailable, w3

# 1337 and 31337: local nodes (ganache, hardhat); the last is eth-tester's own chain id.
DEV_CHAIN_IDS = frozenset({1337, 31337, 131277322940537})
DEV_OPERATOR_KEY = "0x" + keccak(text="computemesh development operator key").hex()
DEV_TREASURY_KEY = "0x" + keccak(text="computemesh development treasury key").hex()
GAS_ETH = Web3.to_wei(10, "ether")
# How long a process trusts its last look at the chain's identity: every send and every
# indexer pass reads the contracts' addresses, and each look costs a few calls.
IDENTITY_TTL_S = 5.0
_identity_seen: dict[tuple[str, int], float] = {}
# Sent with `chain_id` and `reason` when the chain our contracts were on is gone, inside the
# transaction that forgets it (services/payments.py listens, connected in apps.py).
chain_gone = Signal()


def is_dev_chain() -> bool:
    return chain_id() in DEV_CHAIN_IDS


def operator_key() -> str:
    if settings.CHAIN_OPERATOR_KEY:
        return settings.CHAIN_OPERATOR_KEY
    if not is_dev_chain():
        raise ChainError("CHAIN_OPERATOR_KEY is not set; a real chain needs the operator's key.",
                         code="not_configured")
    return DEV_OPERATOR_KEY


def operator_address() -> str:
    return Account.from_key(operator_key()).address


def treasury_address() -> str:
    """Where the platform fee is credited. The development address's key is derived from a
    public string: anyone could withdraw what it holds, so only a development chain gets it."""
    return _role_address("CHAIN_TREASURY_ADDRESS", lambda: Account.from_key(DEV_TREASURY_KEY).address)


def admin_address() -> str:
    """DEFAULT_ADMIN_ROLE (grants and revokes every role): CHAIN_ADMIN_ADDRESS, a cold key or
    multisig; the operator on a development chain."""
    return _role_address("CHAIN_ADMIN_ADDRESS", operator_address)


def pauser_address() -> str:
    """PAUSER_ROLE: CHAIN_PAUSER_ADDRESS; the operator on a development chain."""
    return _role_address("CHAIN_PAUSER_ADDRESS", operator_address)


def _role_address(setting: str, development) -> str:
    value = getattr(settings, setting)
    if value:
        if not Web3.is_address(value):
            raise ChainError(f"{setting} is not an address: {value!r}.", code="not_configured")
        return Web3.to_checksum_address(value)
    if not is_dev_chain():
        raise ChainError(f"{setting} is not set; only a development chain has a default "
                         f"(chain id {chain_id()} is not one).", code="not_configured")
    return development()


def addresses() -> dict[str, str]:
    """The contracts deployed on the current chain: {"token": …, "escrow": …, "stake": …}.
    None when the chain is not the one they were deployed on (`chain_identity_check`)."""
    chain_identity_check()
    rows = {c.name: c.address for c in ChainContract.objects.filter(chain_id=chain_id())}
    if settings.CHAIN_TOKEN_ADDRESS:
        rows["token"] = Web3.to_checksum_address(settings.CHAIN_TOKEN_ADDRESS)
    return rows


def escrow_contract():
    found = addresses()
    if "escrow" not in found:
        raise ChainError("The escrow contract is not deployed on this chain; run `manage.py chain_deploy`.",
                         code="not_deployed")
    return contract("JobEscrow", found["escrow"])


def fund_terms_signature(*, job_key: str, consumer: str, amount: int, deadline: int) -> str:
    """The operator's signature (0x hex) of the terms `JobEscrow.fund` checks: only
    `consumer` can fund `job_key`, with exactly `amount` base units and this `deadline`."""
    signature = terms.sign_fund_terms(
        key=operator_key(), chain_id=chain_id(), escrow=escrow_contract().address,
        job_id=bytes.fromhex(job_key.removeprefix("0x")), consumer=Web3.to_checksum_address(consumer),
        amount=amount, deadline=deadline)
    return "0x" + signature.hex()


def stake_contract():
    found = addresses()
    if "stake" not in found:
        raise ChainError("The stake contract is not deployed on this chain; run `manage.py chain_deploy`.",
                         code="not_deployed")
    return contract("ProviderStake", found["stake"])


def token_contract():
    found = addresses()
    if "token" not in found:
        raise ChainError("No settlement token on this chain; run `manage.py chain_deploy`.",
                         code="not_deployed")
    return contract("TestUSD", found["token"])


def _deployed(address: str | None) -> bool:
    return bool(address) and len(w3().eth.get_code(Web3.to_checksum_address(address))) > 0


def give_gas(address: str, wei: int = GAS_ETH) -> None:
    """Development chains only: ether for gas from the node's first unlocked account."""
    if not is_dev_chain():
        raise ChainError("Only a development chain hands out ether.", code="not_dev_chain")
    if w3().eth.get_balance(address) >= wei // 2:
        return
    tx = w3().eth.send_transaction({"from": w3().eth.accounts[0], "to": address, "value": wei})
    w3().eth.wait_for_transaction_receipt(tx, timeout=settings.CHAIN_RECEIPT_TIMEOUT_S)


def deploy(*, force: bool = False) -> dict[str, str]:
    """Deploy what the current chain lacks (the development token unless CHAIN_TOKEN_ADDRESS
    names one, the escrow and the provider stake) and record the addresses. Idempotent: contracts recorded and
    present on the chain are kept."""
    cid = chain_id()
    key = operator_key()
    operator = Account.from_key(key).address
    if is_dev_chain():
        give_gas(operator)
    found = {} if force else {n: a for n, a in addresses().items() if _deployed(a)}
    if {"token", "escrow", "stake"} <= found.keys():
        return found
    # Every role's address before anything is sent: a chain that is not a development one
    # gets no contract with a public treasury or a single hot key holding every role.
    treasury, admin, pauser = treasury_address(), admin_address(), pauser_address()
    if "token" not in found:
        found["token"] = _deploy(cid, key, "token", contract("TestUSD").constructor(operator))
    if "escrow" not in found:
        found["escrow"] = _deploy(cid, key, "escrow", contract("JobEscrow").constructor(
            found["token"], treasury, admin, pauser, operator))
    if "stake" not in found:
        # ProviderStake's admin also holds its pauser role (one address in its constructor).
        found["stake"] = _deploy(cid, key, "stake", contract("ProviderStake").constructor(
            found["token"], treasury, admin, operator, settings.STAKE_WITHDRAW_DELAY_S))
    return found


def _deploy(cid: int, key: str, name: str, constructor) -> str:
    stored = sender.wait(sender.send(key=key, purpose="deploy", call=constructor))
    receipt = w3().eth.get_transaction_receipt(stored.tx_hash)
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise ChainError(f"Deploying the {name} contract failed ({stored.tx_hash}).", code="reverted")
    address = receipt["contractAddress"]
    ChainContract.objects.update_or_create(chain_id=cid, name=name, defaults={
        "address": address, "block_number": receipt["blockNumber"],
        **_identity_of(address, receipt["blockNumber"])})
    return address


def mint_to(address: str, amount) -> None:
    """Development token only: mint tUSD (the operator holds the minter role)."""
    if settings.CHAIN_TOKEN_ADDRESS:
        raise ChainError("The configured settlement token cannot be minted.", code="not_dev_chain")
    sender.wait(sender.send(key=operator_key(), purpose="mint",
                            call=token_contract().functions.mint(address, to_units(amount))))


def _block_hash(number: int | str) -> str:
    block = w3().eth.get_block(number)
    return "0x" + bytes(block["hash"]).hex()


def _identity_of(address: str, block_number: int) -> dict[str, str]:
    """What says that a contract is the one we deployed: the chain's genesis, its deployment
    block and its code, as hashes."""
    return {"genesis_hash": _block_hash(0), "block_hash": _block_hash(block_number),
            "code_hash": "0x" + keccak(bytes(w3().eth.get_code(Web3.to_checksum_address(address)))).hex()}


def _identity_mismatch(rows: list[ChainContract]) -> str | None:
    """Why the chain is not the one `rows` were deployed on, or None."""
    genesis = _block_hash(0)
    for row in rows:
        if row.genesis_hash and row.genesis_hash != genesis:
            return f"the chain was reset: its genesis block is {genesis}, not {row.genesis_hash}"
    for row in rows:
        try:
            now = _identity_of(row.address, row.block_number)
        except Exception:  # web3's BlockNotFound and friends: the node is behind our records
            return (f"the chain has no block {row.block_number}, where the {row.name} contract was "
                    f"deployed ({row.block_hash or 'hash not recorded'})")
        if row.block_hash and now["block_hash"] != row.block_hash:
            return (f"the chain was rewritten: block {row.block_number} is {now['block_hash']}, "
                    f"not {row.block_hash}, where the {row.name} contract was deployed")
        if row.code_hash and now["code_hash"] != row.code_hash:
            return f"the {row.name} contract at {row.address} is not there (its code hash changed)"
    return None


def _behind_records(cid: int) -> str | None:
    """With no contract recorded (a deployment cut short) the transactions must do: a chain
    behind the blocks they were mined in is not theirs."""

    live = ChainTransaction.objects.filter(chain_id=cid, lost_reason="")
    seen = live.aggregate(b=Max("block_number"))["b"] or 0
    head = w3().eth.block_number
    if seen > head or (head == 0 and live.exists()):
        return (f"the chain was reset: its head is block {head}, and the platform's transactions were "
                f"sent on one that reached block {seen}")
    return None


def chain_identity_check(*, force: bool = False) -> str | None:
    """Is the chain the node serves the one our contracts (and so our escrows) are on? The
    chain id alone cannot tell: a development chain that starts afresh, or a node pointed
    at another network with the same id, keeps it. Compares the genesis, each contract's
    deployment block and its code with what `deploy` recorded; on a mismatch the old chain
    is handled as lost (`chain_lost`) and the reason returned. Checked at most every
    IDENTITY_TTL_S per process unless `force`."""
    try:
        cid = chain_id()
        seen_key = (settings.CHAIN_RPC_URL or "in-process", cid)
        if not force and time.monotonic() - _identity_seen.get(seen_key, -IDENTITY_TTL_S) < IDENTITY_TTL_S:
            return None
        rows = list(ChainContract.objects.filter(chain_id=cid).order_by("block_number", "name"))
        reason = _identity_mismatch(rows) if rows else _behind_records(cid)
        if reason is None:
            for row in rows:  # rows recorded before identities were: this chain is theirs
                if not (row.genesis_hash and row.block_hash and row.code_hash):
                    ChainContract.objects.filter(pk=row.pk).update(
                        **_identity_of(row.address, row.block_number))
    except ChainError:
        raise
    except Exception as exc:
        raise unavailable(exc) from exc
    if reason is None:
        _identity_seen[seen_key] = time.monotonic()
        return None
    chain_lost(cid=cid, genesis=next((r.genesis_hash for r in rows if r.genesis_hash), ""), reason=reason)
    return reason


def chain_lost(*, cid: int, genesis: str, reason: str) -> None:
    """The chain our contracts were on is gone. `chain_gone` goes out first (the payments
    mark its escrows for staff to resolve: services/escrow_events.escrows_chain_lost), the
    transactions sent there stay recorded as sent on it, and the contracts, nonces and the
    indexer's place are forgotten: `chain_deploy` deploys afresh. Within a caller's
    transaction this is undone with it; the indexer's next pass (no transaction around it)
    records it."""
    with transaction.atomic():
        chain_gone.send(sender=ChainContract, chain_id=cid, reason=reason)
        if cid in DEV_CHAIN_IDS:
            _forget_stakes(cid)
        ChainTransaction.objects.filter(chain_id=cid, lost_reason="").update(
            lost_reason=reason[:300], lost_genesis=genesis)
        ChainContract.objects.filter(chain_id=cid).delete()
        ChainAccount.objects.filter(chain_id=cid).delete()
        ChainCursor.objects.filter(chain_id=cid).delete()


def _forget_stakes(cid: int) -> None:
    """A development chain that started afresh holds no stakes: the rows that followed the
    old one's events go, and slashes wait for a new transaction."""
    DisputeSlash.objects.filter(transaction__chain_id=cid).update(transaction=None)
    StakeOperation.objects.filter(transaction__chain_id=cid).delete()
    ProviderStake.objects.all().delete()
    Offer.objects.filter(provider_stake__gt=0).update(provider_stake=0)
