"""Deploying the contracts and funding development accounts.

The operator key signs settlements and refunds. On a development chain (the in-process EVM,
or a local node with unlocked accounts) an empty
CHAIN_OPERATOR_KEY means a fixed development key, which `check --deploy` refuses: it is
public, like every development key.
"""

from decimal import Decimal

from django.conf import settings
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from ..payment_models import ChainAccount, ChainContract, ChainCursor
from . import sender
from .client import ChainError, chain_id, contract, to_units, w3

# 1337 and 31337: local nodes (ganache, hardhat); the last is eth-tester's own chain id.
DEV_CHAIN_IDS = frozenset({1337, 31337, 131277322940537})
DEV_OPERATOR_KEY = "0x" + keccak(text="computemesh development operator key").hex()
DEV_TREASURY_KEY = "0x" + keccak(text="computemesh development treasury key").hex()
GAS_ETH = Web3.to_wei(10, "ether")


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
    return settings.CHAIN_TREASURY_ADDRESS or Account.from_key(DEV_TREASURY_KEY).address


def addresses() -> dict[str, str]:
    """The contracts deployed on the current chain: {"token": …, "escrow": …, "stake": …}."""
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
    if "token" not in found:
        found["token"] = _deploy(cid, key, "token", contract("TestUSD").constructor(operator))
    if "escrow" not in found:
        found["escrow"] = _deploy(cid, key, "escrow", contract("JobEscrow").constructor(
            found["token"], treasury_address(), operator, operator))
    if "stake" not in found:
        found["stake"] = _deploy(cid, key, "stake", contract("ProviderStake").constructor(
            found["token"], treasury_address(), operator, operator, settings.STAKE_WITHDRAW_DELAY_S))
    return found


def _deploy(cid: int, key: str, name: str, constructor) -> str:
    stored = sender.wait(sender.send(key=key, purpose="deploy", call=constructor))
    receipt = w3().eth.get_transaction_receipt(stored.tx_hash)
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise ChainError(f"Deploying the {name} contract failed ({stored.tx_hash}).", code="reverted")
    address = receipt["contractAddress"]
    ChainContract.objects.update_or_create(chain_id=cid, name=name, defaults={
        "address": address, "block_number": receipt["blockNumber"]})
    return address


def mint_to(address: str, amount) -> None:
    """Development token only: mint tUSD (the operator holds the minter role)."""
    if settings.CHAIN_TOKEN_ADDRESS:
        raise ChainError("The configured settlement token cannot be minted.", code="not_dev_chain")
    sender.wait(sender.send(key=operator_key(), purpose="mint",
                            call=token_contract().functions.mint(address, to_units(amount))))


def chain_reset_detected() -> bool:
    """A development chain that started afresh (the in-process EVM on each `make demo`):
    it is behind blocks we recorded. Its contracts, our nonces, our transactions and the
    indexer's place went with it: forget them."""
    from django.db.models import Max

    from ..payment_models import ChainTransaction, Settlement

    if not is_dev_chain():
        return False
    cid = chain_id()
    seen = max(ChainTransaction.objects.filter(chain_id=cid).aggregate(b=Max("block_number"))["b"] or 0,
               ChainContract.objects.filter(chain_id=cid).aggregate(b=Max("block_number"))["b"] or 0)
    if seen <= w3().eth.block_number and not (
            ChainTransaction.objects.filter(chain_id=cid).exists() and w3().eth.block_number == 0):
        return False
    Settlement.objects.filter(transaction__chain_id=cid).update(transaction=None)
    _forget_stakes(cid)
    ChainTransaction.objects.filter(chain_id=cid).delete()
    ChainContract.objects.filter(chain_id=cid).delete()
    ChainAccount.objects.filter(chain_id=cid).delete()
    ChainCursor.objects.filter(chain_id=cid).delete()
    return True


def _forget_stakes(cid: int) -> None:
    """A development chain that started afresh holds no stakes: the rows that followed the
    old one's events go, and slashes wait for a new transaction."""
    from ..models import Offer
    from ..trust_models import DisputeSlash, ProviderStake, StakeOperation

    DisputeSlash.objects.filter(transaction__chain_id=cid).update(transaction=None)
    StakeOperation.objects.filter(transaction__chain_id=cid).delete()
    ProviderStake.objects.all().delete()
    Offer.objects.filter(provider_stake__gt=0).update(provider_stake=0)


def dev_wallets(*, mint, provider_mint=Decimal(0)) -> list[str]:
    """Development chains: every organization gets a custodial wallet, gas, consumers tUSD
    up to `mint` and providers up to `provider_mint` (to stake)."""
    from ..models import Organization
    from ..services.wallets import wallet_create_custodial

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
                mint_to(wallet.address, want - Decimal(held) / 10**6)
        out.append(f"{org.name}: {wallet.address}")
    return out
