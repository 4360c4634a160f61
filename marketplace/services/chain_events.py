"""What the chain's events mean for the platform: the escrow's move escrows and jobs
(services/escrow_events.py), the stake contract's move stakes and disputes (services/staking.py).
The indexer (chain/indexer.py) reads them generically; `connect` registers these sources with
it (apps.py, in every process).
"""

from ..chain import indexer
from ..chain.deploy import escrow_contract, stake_contract
from . import escrow_events, staking

ESCROW_EVENTS = ("JobFunded", "JobToppedUp", "JobSettled", "JobRefunded", "SettlementSkipped")
STAKE_EVENTS = ("Staked", "WithdrawalRequested", "Withdrawn", "Slashed")


def escrow_event_apply(name: str, args, tx_hash: str, entry) -> None:
    """One escrow event, applied idempotently (a re-read range applies it again)."""
    key = "0x" + bytes(args["jobId"]).hex()
    if name == "JobFunded":
        escrow_events.escrow_funded(key=key, consumer=args["consumer"], amount=args["amount"],
                               deadline=args["deadline"], tx_hash=tx_hash)
    elif name == "JobToppedUp":
        escrow_events.escrow_topped_up(key=key, total=args["total"])
    elif name == "JobSettled":
        escrow_events.escrow_closed(key=key, refunded=False, paid=args["paidToProviders"], fee=args["fee"],
                               returned=args["refunded"], tx_hash=tx_hash)
    elif name == "JobRefunded":
        escrow_events.escrow_closed(key=key, refunded=True, paid=0, fee=0, returned=args["amount"],
                               tx_hash=tx_hash)
    elif name == "SettlementSkipped":  # the batch paid nothing for this job: say why
        escrow_events.escrow_settlement_skipped(key=key, state=args["state"], tx_hash=tx_hash)


def stake_event_apply(name: str, args, tx_hash: str, entry) -> None:
    staking.stake_event_seen(name=name, args=args, tx_hash=tx_hash, log_index=entry["logIndex"],
                             block_number=entry["blockNumber"])


def connect() -> None:
    """Have the indexer read the escrow's and the stake contract's events."""
    indexer.source_register(indexer.Source("escrow", escrow_contract, ESCROW_EVENTS, escrow_event_apply))
    indexer.source_register(indexer.Source("stake", stake_contract, STAKE_EVENTS, stake_event_apply))
