"""The agent ingest's fast path for progress (services/progress_ingest.py), on PostgreSQL:
the same outcome as the ORM path (agent_data_batch), declined where only the ORM path
knows what to do, and a broken connection costing nothing but the detour."""

import asyncio
import json

import pytest
from django.db import connection

from marketplace.models import Assignment, Job, MetricPoint
from marketplace.services import agent_ingest
from marketplace.services.progress_ingest import ProgressWriter

from .factories import JobFactory, NodeFactory, OfferFactory
from .test_agent_socket import connect, run, token_node

pytestmark = pytest.mark.django_db(transaction=True)
A = Assignment.Status


def _assignment(node, status=A.RUNNING, job=None) -> Assignment:
    job = job or JobFactory(status=Job.Status.RUNNING)
    offer = OfferFactory(node=node)
    return Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=1,
                                     price_per_gpu_hour=offer.price_per_gpu_hour, status=status)


def _progress(a, seq, *items, id=None):
    return {"type": "progress", "id": id or f"p{a.pk}-{seq}", "assignment": a.pk, "seq": seq,
            "items": list(items)}


def _item(step, loss=None, **kw):
    return {"step": step, "total_steps": 100, "loss": loss, "samples_per_sec": 50.0,
            "at": 1_790_000_000 + step, **kw}


async def _apply(items):
    writer = ProgressWriter()
    outbox, snapshots = [], set()
    try:
        results = await writer.apply(items, outbox, snapshots)
    finally:
        await writer.close()
    return results, outbox, snapshots


def _rows(job_id):
    return list(MetricPoint.objects.filter(job_id=job_id).order_by("seq").values(
        "seq", "step", "total_steps", "epoch", "loss", "samples_per_sec", "comm_bytes", "comm_bytes_ddp",
        "at"))


def test_progress_is_stored_numbered_and_broadcast_after_the_commit():
    node = NodeFactory()
    a, b = _assignment(node), _assignment(node)
    results, outbox, snapshots = run(_apply([
        (node, _progress(a, 1, _item(1, 0.9), _item(2, 0.8))),
        (node, _progress(b, 1, _item(7, 0.5, comm_bytes=10, comm_bytes_ddp=1000))),
        (node, _progress(a, 2, _item(3, 0.7))),
    ]))
    assert results == [None, None, None]
    assert [(r["seq"], r["step"], r["loss"]) for r in _rows(a.job_id)] == \
        [(1, 1, 0.9), (2, 2, 0.8), (3, 3, 0.7)]
    assert [(r["seq"], r["comm_bytes"]) for r in _rows(b.job_id)] == [(1, 10)]
    job = Job.objects.get(pk=a.job_id)
    assert (job.metric_seq, job.current_step, job.total_steps, job.last_loss) == (3, 3, 100, 0.7)
    assert Assignment.objects.get(pk=a.pk).last_seq == 2 and Assignment.objects.get(pk=b.pk).last_seq == 1
    assert snapshots == {a.job_id, b.job_id}
    sent = dict(outbox)
    message = sent[f"job.{a.job_id}"]["message"]
    assert message["type"] == "metrics" and [p["seq"] for p in message["points"]] == [1, 2, 3]
    assert message["points"][0]["at"].startswith("2026-09-21")  # ISO 8601, as the ORM path sends


def test_the_same_messages_give_the_same_rows_as_the_orm_path():
    node = NodeFactory()
    fast, orm = _assignment(node), _assignment(node)
    Job.objects.filter(pk__in=[fast.job_id, orm.job_id]).update(last_loss=0.42, comm_bytes=5)

    def messages(a):  # a sample without loss keeps the job's last loss; bad numbers fall back
        return [(node, _progress(a, 1, _item(1, 0.9, epoch=1), _item(2, None, samples_per_sec="x"))),
                (node, _progress(a, 2, _item(3, None, comm_bytes=-4))),
                (node, _progress(a, 2, _item(3, 0.1)))]  # a resend: acked, not applied

    fast_results, _, _ = run(_apply(messages(fast)))
    orm_results = agent_ingest.agent_data_batch(items=messages(orm), outbox=[], snapshots=set())
    assert fast_results == orm_results == [None, None, None]
    assert _rows(fast.job_id) == _rows(orm.job_id) and len(_rows(fast.job_id)) == 3
    fields = ("metric_seq", "current_step", "total_steps", "last_loss", "samples_per_sec", "comm_bytes")
    got = {j["id"]: j for j in Job.objects.filter(pk__in=[fast.job_id, orm.job_id]).values("id", *fields)}
    assert {k: v for k, v in got[fast.job_id].items() if k != "id"} == \
        {k: v for k, v in got[orm.job_id].items() if k != "id"}
    # The batch's last sample for the job says neither: the job keeps what it had.
    assert got[fast.job_id]["last_loss"] == 0.42 and got[fast.job_id]["comm_bytes"] == 5


def test_errors_are_per_message_and_undo_nothing_else():
    node, other = NodeFactory(), NodeFactory()
    a, theirs = _assignment(node), _assignment(other)
    results, _, _ = run(_apply([
        (node, _progress(a, 2, _item(1))),                    # a gap: seq 1 never came
        (node, _progress(theirs, 1, _item(1))),               # another node's assignment
        (node, {"type": "progress", "id": "x", "assignment": "nope", "seq": 1}),
        (node, _progress(a, 1, _item(5, 0.3))),
    ]))
    assert [r.code if r else None for r in results] == ["out_of_order", "not_yours", "malformed", None]
    assert [r["step"] for r in _rows(a.job_id)] == [5]
    assert not _rows(theirs.job_id) and Assignment.objects.get(pk=theirs.pk).last_seq == 0


def test_an_ended_assignment_advances_its_sequence_and_stores_nothing():
    node = NodeFactory()
    a = _assignment(node, status=A.LOST)
    results, outbox, snapshots = run(_apply([(node, _progress(a, 1, _item(1, 0.5)))]))
    assert results == [None] and not outbox and not snapshots
    assert not _rows(a.job_id) and Assignment.objects.get(pk=a.pk).last_seq == 1


@pytest.mark.parametrize("batch", ["accepted", "log"])
def test_what_only_the_orm_path_knows_is_declined_untouched(batch):
    node = NodeFactory()
    a = _assignment(node, status=A.ACCEPTED if batch == "accepted" else A.RUNNING)
    items = [(node, _progress(a, 1, _item(1)))]
    if batch == "log":
        items.append((node, {"type": "log", "id": "l", "assignment": a.pk, "seq": 2, "lines": ["hi"]}))
    assert run(_apply(items)) == (None, [], set())
    assert not _rows(a.job_id) and Assignment.objects.get(pk=a.pk).last_seq == 0


def _terminate(pid: int) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_broken_connection_costs_a_detour_not_a_point(monkeypatch):
    from marketplace.consumers import ingest as ingest_engine

    node = token_node()
    a = _assignment(node)
    used = []
    apply = ProgressWriter.apply

    async def spy(self, items, outbox, snapshots):
        try:
            results = await apply(self, items, outbox, snapshots)
        except Exception:
            used.append("failed")
            raise
        used.append("fast" if results is not None else "declined")
        return results

    monkeypatch.setattr(ProgressWriter, "apply", spy)

    async def scenario():
        comm = connect("cmn_socket_test")
        assert (await comm.connect())[0]
        acks = []
        for seq in range(1, 7):
            if seq == 4:  # PostgreSQL drops the fast path's connection between two batches
                writer = ingest_engine._ingests[asyncio.get_running_loop()].writer
                await asyncio.to_thread(_terminate, writer.conn.info.backend_pid)
            await comm.send_to(text_data=json.dumps(_progress(a, seq, _item(seq, 1.0 / seq))))
            acks += json.loads(await comm.receive_from(timeout=10))["ids"]
        await comm.disconnect()
        return acks

    acks = run(scenario())
    assert acks == [f"p{a.pk}-{s}" for s in range(1, 7)]
    assert [r["seq"] for r in _rows(a.job_id)] == [1, 2, 3, 4, 5, 6]
    # The broken connection fails one batch, which the ORM path applies; then a new connection.
    assert used == ["fast", "fast", "fast", "failed", "fast", "fast"]
