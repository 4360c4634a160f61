"""A transaction's page: what it moved, between whom, for which job, on which chain.

The chain is public, so anyone signed in may look a hash up; what the platform adds is
scoped to the viewer: jobs link only for those who may open them, and organizations are
named only to their own members and to staff (everyone else sees the addresses)."""

from __future__ import annotations

from ..chain import deploy
from ..chain.client import ChainError, chain_id
from ..models import (
    ConsumerDispute,
    DisputeSlash,
    Escrow,
    FaucetGrant,
    Job,
    Settlement,
    StakeOperation,
    Wallet,
)
from .accounts import organization_of
from .ownership import jobs_visible_to
from .payments import chain_transaction

# Chain ids a page names (https://chainlist.org's names); any other is shown by its number.
CHAIN_NAMES = {
    1: "Ethereum", 11155111: "Ethereum Sepolia (testnet)", 137: "Polygon PoS",
    80002: "Polygon Amoy (testnet)", 8453: "Base", 84532: "Base Sepolia (testnet)", 42161: "Arbitrum One",
    421614: "Arbitrum Sepolia (testnet)",
    10: "OP Mainnet", 11155420: "OP Sepolia (testnet)", 100: "Gnosis", 43114: "Avalanche C-Chain",
    1337: "Local development chain (Ganache)", 31337: "Local development chain (Hardhat)",
    131277322940537: "In-process development chain (eth-tester)",
}


def chain_name(chain_id: int | None) -> str:
    if chain_id is None:
        return "—"
    name = CHAIN_NAMES.get(int(chain_id))
    return f"{name} (chain id {chain_id})" if name else f"Chain id {chain_id}"


def _party(address: str, user, org_names: dict[str, tuple[int, str]], roles: dict[str, str]) -> dict:
    """An address with what the viewer may know of it."""
    label = roles.get(address, "")
    owner = org_names.get(address)
    viewer = organization_of(user)
    if owner is not None and (user.is_staff or (viewer is not None and viewer.pk == owner[0])):
        label = f"{owner[1]}'s wallet" + (" (yours)" if viewer is not None and viewer.pk == owner[0] else "")
    elif owner is not None and not label:
        label = "an organization's wallet"
    return {"address": address, "label": label}


def _roles() -> dict[str, str]:
    """The platform's own addresses on the current chain: contracts, operator, treasury."""
    try:
        found = deploy.addresses()
        roles = {address: f"the {name} contract" for name, address in found.items()}
        roles[deploy.operator_address()] = "the platform's operator"
        roles[deploy.treasury_address()] = "the platform's treasury"
    except (ChainError, Exception):  # the chain does not answer: the page shows plain addresses
        return {}
    return roles


def transaction_view(tx_hash: str, user) -> dict:
    """Everything the transaction page shows about `tx_hash` (the platform's record, its
    jobs, amounts and parties), scoped to `user`."""
    tx = chain_transaction(tx_hash)
    items: list[dict] = []
    parties: list[dict] = []

    def job_ref(job: Job) -> dict:
        return {"id": job.pk, "name": job.name, "visible": False}

    for escrow in Escrow.objects.filter(fund_tx=tx_hash).select_related("job"):
        items.append({"what": "Deposit into the job's escrow", "job": job_ref(escrow.job),
                      "amount": escrow.amount if escrow.status != Escrow.Status.UNFUNDED else None,
                      "from": escrow.consumer_address, "to": "escrow"})
    for escrow in Escrow.objects.filter(top_up_tx=tx_hash).select_related("job"):
        items.append({"what": "Top-up of the job's escrow", "job": job_ref(escrow.job),
                      "amount": None, "from": escrow.consumer_address, "to": "escrow"})
    refunded = Escrow.objects.filter(close_tx=tx_hash, status=Escrow.Status.REFUNDED)
    for escrow in refunded.select_related("job"):
        items.append({"what": "Escrow refunded to the consumer", "job": job_ref(escrow.job),
                      "amount": escrow.amount, "from": "escrow", "to": escrow.consumer_address})
    settlements = Settlement.objects.filter(transaction__tx_hash=tx_hash).select_related("job__escrow")
    for s in settlements.prefetch_related("payouts__provider"):
        job = job_ref(s.job)
        items.append({"what": "Settlement: paid for the work", "job": job, "amount": s.charged,
                      "fee": s.fee, "from": "escrow", "to": "providers and treasury",
                      "payouts": [{"address": p.address, "amount": p.amount} for p in s.payouts.all()]})
        if s.refunded:
            consumer = Escrow.objects.filter(job_id=s.job_id).values_list("consumer_address", flat=True)
            items.append({"what": "Settlement: unspent escrow back to the consumer", "job": job,
                          "amount": s.refunded, "from": "escrow", "to": consumer.first() or ""})
    for g in FaucetGrant.objects.filter(transaction__tx_hash=tx_hash).select_related("wallet"):
        items.append({"what": "Test tUSD minted by the faucet", "job": None, "amount": g.amount,
                      "from": "token", "to": g.wallet.address})
    for op in StakeOperation.objects.filter(transaction__tx_hash=tx_hash):
        items.append({"what": op.get_kind_display(), "job": None, "amount": op.amount, "from": op.address,
                      "to": "stake"})
    for slash in DisputeSlash.objects.filter(transaction__tx_hash=tx_hash).select_related("dispute__job"):
        items.append({"what": f"Stake slashed for dispute #{slash.dispute_id}",
                      "job": job_ref(slash.dispute.job),
                      "amount": slash.amount, "from": slash.provider_address, "to": slash.recipient})
    for d in ConsumerDispute.objects.filter(refund_tx=tx_hash).select_related("job"):
        items.append({"what": f"Refund for dispute #{d.pk}", "job": job_ref(d.job), "amount": d.refund_amount,
                      "from": "treasury", "to": ""})

    # A settlement batch carries other organizations' jobs: the viewer sees those it may open,
    # and how many others there are.
    refs = [i["job"] for i in items if i["job"] is not None]
    visible = set(jobs_visible_to(user).filter(pk__in={r["id"] for r in refs}).values_list("pk", flat=True))
    for ref in refs:
        ref["visible"] = ref["id"] in visible
        if not ref["visible"]:
            ref["name"] = ""
    hidden = sum(1 for i in items if i["job"] is not None and not i["job"]["visible"])
    if not user.is_staff:
        items = [i for i in items if i["job"] is None or i["job"]["visible"]]
    addresses = {a for i in items for a in (i.get("from"), i.get("to")) if a and a.startswith("0x")}
    addresses |= {p["address"] for i in items for p in i.get("payouts", [])}
    if tx is not None:
        addresses |= {tx.sender} | ({tx.to} if tx.to else set())
    org_names = {w.address: (w.organization_id, w.organization.name)
                 for w in Wallet.objects.filter(address__in=addresses).select_related("organization")}
    roles = _roles()
    for address in sorted(addresses):
        parties.append(_party(address, user, org_names, roles))
    labels = {p["address"]: p["label"] for p in parties}
    for i in items:
        for p in i.get("payouts", []):
            p["label"] = labels.get(p["address"], "")
    return {"tx": tx, "tx_hash": tx_hash, "chain": chain_name(tx.chain_id if tx else _current_chain_id()),
            "items": items, "parties": parties, "labels": labels,
            "hidden_jobs": 0 if user.is_staff else hidden}


def _current_chain_id() -> int | None:
    try:
        return chain_id()
    except ChainError:
        return None
