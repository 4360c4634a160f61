"""The escrow event indexer: reads logs in block ranges from its cursor, only up to the
newest block with enough confirmations, and applies nothing twice (a crash re-reads a
range, so every handler must be idempotent)."""

from __future__ import annotations

import pytest

from marketplace.chain import client, indexer
from marketplace.models import ChainContract, ChainCursor, Escrow, Job, JobEvent
from marketplace.services import funding
from workers.tasks_chain import settle_pending

from .support import committed, completed_job, funded_job, submitted_job

pytestmark = pytest.mark.django_db
S = Job.Status


def fund_unindexed(owner, budget: str = "10") -> Job:
    job = submitted_job(owner, budget=budget)
    with committed():
        funding.job_fund(job=job)
    return job


def snapshot() -> tuple:
    return (sorted(Job.objects.values_list("pk", "status")),
            sorted(Escrow.objects.values_list("pk", "status", "amount", "close_tx")),
            JobEvent.objects.count())


def test_reading_the_same_blocks_again_changes_nothing(wallets, healthcare, energy, carol_node):
    funded_job(healthcare)
    completed_job(energy, carol_node, minutes=20)
    assert settle_pending()  # JobFunded ×2, JobSettled ×1 applied by now
    before = snapshot()
    assert indexer.index_events() == 0

    # A crash after reading but before the cursor moved: everything is read again.
    deployed = ChainContract.objects.get(name="escrow").block_number
    ChainCursor.objects.update(last_block=deployed - 1)
    assert indexer.index_events() == 3

    assert snapshot() == before
    assert Job.objects.filter(status=S.SETTLED).count() == 1


def test_logs_are_read_in_ranges_of_chain_log_range_blocks(wallets, healthcare, settings, monkeypatch):
    settings.CHAIN_LOG_RANGE = 3
    jobs = [fund_unindexed(healthcare) for _ in range(3)]  # approve + fund each: six blocks
    eth = client.w3().eth
    get_logs, ranges = eth.get_logs, []

    def spy(params):  # the escrow's reads (the stake contract is read in its own ranges)
        if params["address"] == wallets.escrow.address:
            ranges.append((params["fromBlock"], params["toBlock"]))
        return get_logs(params)

    monkeypatch.setattr(eth, "get_logs", spy)
    start = ChainCursor.objects.filter(address=wallets.escrow.address).first()
    assert start is None  # first read: from the deployment on

    assert indexer.index_events(max_ranges=1) == 0  # the first blocks: wallets, gas, tUSD
    assert len(ranges) == 1
    first = ranges[0]
    assert first[1] - first[0] == 2
    assert ChainCursor.objects.get(address=wallets.escrow.address).last_block == first[1]

    applied = indexer.index_events()

    assert applied == 3
    assert all(Job.objects.get(pk=j.pk).status == S.FUNDED for j in jobs)
    assert all(b - a + 1 <= 3 for a, b in ranges)
    assert all(nxt[0] == prev[1] + 1 for prev, nxt in zip(ranges, ranges[1:], strict=False))
    assert first[0] == ChainContract.objects.get(name="escrow").block_number
    assert ranges[-1][1] == eth.block_number
    assert len(ranges) >= 4


def test_only_blocks_with_enough_confirmations_are_read(wallets, healthcare, settings):
    settings.CHAIN_CONFIRMATIONS = 2
    job = fund_unindexed(healthcare)  # the fund is the newest block: one confirmation

    assert indexer.index_events() == 0
    assert Job.objects.get(pk=job.pk).status == S.SUBMITTED
    wallets.w3.eth.send_transaction({"from": wallets.w3.eth.accounts[0],
                                     "to": wallets.w3.eth.accounts[1], "value": 1})
    assert indexer.index_events() == 1
    assert Job.objects.get(pk=job.pk).status == S.FUNDED
