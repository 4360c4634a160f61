"""The demo's chain on disk, and a platform that notices a chain that is not the one its
escrows were funded on.

Each test serves py-evm over JSON-RPC from a folder (`devchain.serve(folder=…)`, what
`make demo` runs) and points the platform at it, as the demo's processes are. A restart is
the server closed and served again from the same folder; a reset is a fresh folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from marketplace.chain import deploy, devchain, indexer, sender
from marketplace.models import (
    ChainAccount,
    ChainContract,
    ChainCursor,
    ChainTransaction,
    Escrow,
    Job,
    Settlement,
)
from marketplace.services import funding, payments
from marketplace.services.wallets import dev_wallets
from workers.tasks_chain import chain_sync, settle_pending

from .conftest import MINT, Chain
from .support import committed, completed_job, funded_job, units

pytestmark = pytest.mark.django_db
S, E = Job.Status, Escrow.Status
FUNDED, SETTLED = 1, 2  # JobEscrow.State


class DiskChain:
    """A devchain served from a folder; `restart` and `reset` point the platform at the new
    server, as a restarted `make demo` does."""

    def __init__(self, settings, folder: Path):
        self.settings, self.folder, self.server = settings, folder, None
        self.start(folder)

    def start(self, folder: Path) -> None:
        self.server, url = devchain.serve(folder=folder)
        self.settings.CHAIN_RPC_URL = url

    def restart(self) -> None:
        self.server.close()
        self.start(self.folder)

    def reset(self, folder: Path) -> None:
        """A fresh chain where the old one was: same chain id, new genesis."""
        self.server.close()
        self.folder = folder
        self.start(folder)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def disk_chain(escrow_on, settings, tmp_path, healthcare, energy, carol, dave):
    chain = DiskChain(settings, tmp_path / "chain")
    deploy.deploy()
    dev_wallets(mint=MINT)
    yield chain
    chain.close()


def onchain_state(key: str) -> int:
    return Chain().escrow_of(key)[3]


def test_a_funded_escrow_survives_a_restart_and_is_paid_once(disk_chain, healthcare, carol_node):
    job = completed_job(healthcare, carol_node, minutes=30, price="1.20")  # 0.60 tUSD of work
    contracts = dict(ChainContract.objects.values_list("name", "address"))
    deploys = ChainTransaction.objects.filter(purpose="deploy").count()

    disk_chain.restart()

    assert onchain_state(job.escrow.key) == FUNDED
    assert deploy.chain_identity_check(force=True) is None
    deploy.deploy()  # what `make demo` runs on each start: nothing new on the same chain
    assert dict(ChainContract.objects.values_list("name", "address")) == contracts
    assert ChainTransaction.objects.filter(purpose="deploy").count() == deploys

    # The batch is sent, the chain restarts before the indexer reads it, the batch is
    # re-broadcast and the task runs again: one payment.
    payments.settlements_prepare()
    with committed():
        tx_hash = payments.settlement_batch_send()
    disk_chain.restart()
    sender.resend_stale(older_than_s=0)
    with committed():
        assert settle_pending() is None  # nothing pending: the statement is in that batch
    indexer.index_events()
    with committed():
        assert settle_pending() is None

    job.refresh_from_db()
    assert job.status == S.SETTLED and job.escrow.status == E.SETTLED
    assert [t.tx_hash for t in ChainTransaction.objects.filter(purpose="settle")] == [tx_hash]
    assert onchain_state(job.escrow.key) == SETTLED
    payout = Settlement.objects.get(job=job).payouts.get()
    assert Chain().owed(payout.address) == units("0.57")  # 0.60 less the 5 % fee, once


def test_a_reset_chain_marks_funded_escrows_lost_for_staff_to_refund(
        disk_chain, tmp_path, healthcare, alice, carol_node, client, admin_user):
    job = funded_job(healthcare, budget="40")
    fund_tx = job.escrow.fund_tx
    # The bug as seen: a completed job whose statement is in a batch when the chain goes.
    done = completed_job(healthcare, carol_node, minutes=30)
    payments.settlements_prepare()
    with committed():
        batch_tx = payments.settlement_batch_send()
    old_genesis = ChainContract.objects.get(name="escrow").genesis_hash
    consumer = job.escrow.consumer_address

    disk_chain.reset(tmp_path / "fresh-chain")
    chain_sync()  # the worker's periodic pass: receipts, re-broadcasts, events

    job.refresh_from_db()
    done.refresh_from_db()
    escrow = job.escrow
    for lost in (escrow, done.escrow):
        assert lost.status == E.CHAIN_LOST
        assert f"not {old_genesis}" in lost.lost_reason and "genesis" in lost.lost_reason
    lost_note = job.events.get(reason="chain_lost")
    assert escrow.lost_reason in lost_note.message and "40.00 tUSD" in lost_note.message
    assert job.status == S.FUNDED  # the work is not undone by the chain; staff decide
    assert Settlement.objects.get(job=done).status == Settlement.Status.PENDING
    with committed():
        assert settle_pending() is None  # nothing is sent to a chain without the escrow
    assert [t.tx_hash for t in ChainTransaction.objects.filter(purpose="settle")] == [batch_tx]

    # The old funding's page says what was sent, and where.
    client.force_login(alice)
    page = client.get(reverse("chain-tx", args=[fund_tx])).content.decode()
    assert "did not send" not in page and "no record" not in page
    assert "which this node no longer has" in page and old_genesis in page
    job_page = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert 'data-testid="escrow-lost"' in job_page and old_genesis in job_page

    # Staff find it by the status filter and refund it on the new chain; twice is once.
    client.force_login(admin_user)
    listing = client.get(reverse("admin:marketplace_escrow_changelist"), {"status__exact": "chain_lost"})
    assert listing.content.decode().count("the chain was reset") == 2
    sent_there = client.get(reverse("admin:marketplace_chaintransaction_changelist"), {"chain": "lost"})
    assert fund_tx[:12] in sent_there.content.decode()
    deploy.deploy()  # `make demo` redeploys on the fresh chain
    before = Chain().balance(consumer)
    for _ in range(2):
        with committed():
            client.post(reverse("admin:marketplace_escrow_changelist"),
                        {"action": "lost_refund", "_selected_action": [escrow.pk, done.escrow.pk]})
    for tx in ChainTransaction.objects.filter(purpose="refund", lost_reason=""):
        sender.wait(tx)

    job.refresh_from_db()
    done.refresh_from_db()
    assert Chain().balance(consumer) - before == units("40") + units("100")  # both deposits, once
    assert ChainTransaction.objects.filter(purpose="refund").count() == 2
    assert job.escrow.status == E.REFUNDED and job.status == S.REFUNDED
    assert job.events.filter(reason="escrow_refunded", to_status=S.REFUNDED).exists()
    # Completed work keeps its status; its timeline says what became of the deposit.
    assert done.escrow.status == E.REFUNDED and done.status == S.COMPLETED
    assert done.events.filter(reason="escrow_refunded", message__contains="minted").exists()
    assert not Settlement.objects.filter(job=done).exists()


def test_a_funding_in_flight_on_a_reset_chain_is_funded_again(disk_chain, tmp_path, healthcare):
    from .support import submitted_job

    job = submitted_job(healthcare, budget="30")
    with committed():
        funding.job_fund(job=job)  # sent; the indexer has not seen it
    disk_chain.reset(tmp_path / "fresh-chain")
    chain_sync()
    deploy.deploy()
    dev_wallets(mint=MINT)

    job.refresh_from_db()
    assert job.escrow.status == E.UNFUNDED
    assert job.events.filter(reason="funding_lost").exists()
    with committed():
        funding.job_fund(job=job)
    indexer.index_events()
    job.refresh_from_db()
    assert job.status == S.FUNDED and onchain_state(job.escrow.key) == FUNDED


def test_a_batch_the_contract_skips_is_recorded_and_not_sent_again(chain, wallets, healthcare, carol_node):
    """The chain has the contracts but not this job's deposit (its funding was lost): the
    batch's SettlementSkipped(job, 0) is recorded, the escrow marked, and no batch retries."""
    from .conftest import _deployment, tester

    job = completed_job(healthcare, carol_node, minutes=30)
    tester().revert_to_snapshot(_deployment.snapshot)  # the contracts stay; the funding goes
    # What was sent after the snapshot went with it: its rows, nonces and the indexer's place
    # too, so that the platform fits the chain again (the escrow row alone still says funded).
    ChainTransaction.objects.filter(block_number__gt=Chain().w3.eth.block_number).delete()
    ChainAccount.objects.all().delete()
    ChainCursor.objects.all().delete()
    dev_wallets(mint=MINT)

    with committed():
        tx_hash = settle_pending()

    job.refresh_from_db()
    statement = Settlement.objects.get(job=job)
    assert (statement.status, statement.skipped_state) == (Settlement.Status.SKIPPED, 0)
    skipped = job.events.get(reason="settlement_skipped")
    assert skipped.data == {"tx": tx_hash, "state": 0} and "unknown to the contract" in skipped.message
    assert job.escrow.status == E.CHAIN_LOST and tx_hash in job.escrow.lost_reason
    assert job.events.filter(reason="chain_lost").count() == 1
    with committed():
        assert settle_pending() is None
    assert ChainTransaction.objects.filter(purpose="settle").count() == 1


KILLED_MID_STREAM = """
import os, sys, threading
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings_test")
import django; django.setup()
from pathlib import Path
from web3 import Web3
from marketplace.chain.persist import PersistentTesterProvider
w3 = Web3(PersistentTesterProvider(Path(sys.argv[1])))
a, b = w3.eth.accounts[:2]
while True:  # until SIGKILLed
    w3.eth.send_transaction({"from": a, "to": b, "value": 1})
    print(w3.eth.block_number, flush=True)
"""


def test_a_chain_killed_mid_stream_reopens_at_a_whole_block(tmp_path):
    """SIGKILL while transactions stream in: the chain reopens at the last committed block,
    its state readable and its next transaction accepted."""
    import signal
    import subprocess
    import sys
    import time

    from web3 import Web3

    from marketplace.chain.persist import PersistentTesterProvider

    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_STREAM, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parent.parent.parent)
    try:
        deadline = time.monotonic() + 60
        seen = 0
        while seen < 30 and time.monotonic() < deadline:
            seen = int(proc.stdout.readline() or 0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert seen >= 30

    provider = PersistentTesterProvider(tmp_path)
    try:
        w3 = Web3(provider)
        head = w3.eth.block_number
        a, b = w3.eth.accounts[:2]
        assert head >= seen
        assert w3.eth.get_balance(b) == 10**24 + head  # one wei per block, each block whole
        w3.eth.send_transaction({"from": a, "to": b, "value": 1})
        assert w3.eth.block_number == head + 1
    finally:
        provider.close()
