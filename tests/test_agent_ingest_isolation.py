"""A hostile or broken agent's message costs only itself: through the real agent socket
(daphne's ASGI application, the Redis channel layer, the shared per-process ingest), honest
agents' messages that land in the same ingest batch as a poisoned one are applied, in
order, and acknowledged; each poisoned message is refused alone, with a reason.

Found by the platform-log scan (tests/stack.py): one agent's `"lines": 5` made the ORM path
raise TypeError, the batch's transaction rolled back, and every message in it, other
agents' progress included, was refused as `internal` (0 points stored)."""

import asyncio
import json
import time

import pytest

from marketplace.models import Assignment, Job, LogLine, MetricPoint

from .factories import JobFactory, OfferFactory
from .test_agent_socket import connect, token_node

pytestmark = pytest.mark.django_db(transaction=True)
A = Assignment.Status


def _assignment(node, *, status, job_status) -> Assignment:
    job = JobFactory(status=job_status)
    offer = OfferFactory(node=node)
    return Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=1,
                                     price_per_gpu_hour=offer.price_per_gpu_hour, status=status)


def _honest(a: Assignment, tag: str, count: int) -> list[dict]:
    """What a real agent sends while training: progress, then a log line, alternately."""
    out = []
    for seq in range(1, count + 1):
        if seq % 2:
            out.append({"type": "progress", "id": f"{tag}-{seq}", "assignment": a.pk, "seq": seq,
                        "items": [{"step": seq, "total_steps": 100, "epoch": 0, "loss": 1.0 / seq,
                                   "samples_per_sec": 40.0, "at": 1_790_000_000 + seq}]})
        else:
            out.append({"type": "log", "id": f"{tag}-{seq}", "assignment": a.pk, "seq": seq,
                        "lines": [f"{tag} line {seq}"]})
    return out


def _poison(a: Assignment) -> list[dict]:
    """Each one numbered as the next message of the poisoner's assignment, so that it passes
    the sequence check and reaches its handler (a refusal does not advance the sequence)."""
    base = {"assignment": a.pk, "seq": 1}
    return [
        {**base, "type": "log", "id": "p-lines-int", "lines": 5},
        {**base, "type": "assignment.accepted", "id": "p-port-abc", "rdzv": {"host": "h", "port": "abc"}},
        {**base, "type": "checkpoint", "id": "p-step-x", "step": "x", "sha256": "00" * 32},
        {**base, "type": "log", "id": "p-assignment-huge", "assignment": 2**70, "lines": ["x"]},
        {**base, "type": "progress", "id": "p-items-int", "items": 5},
        {**base, "type": "checkpoint", "id": "p-step-huge", "step": 2**70, "sha256": "00" * 32},
        {**base, "type": "log", "id": "p-lines-objects", "lines": ["ok", {"not": "a string"}]},
        {**base, "type": "assignment.accepted", "id": "p-port-range", "rdzv": {"host": "h", "port": 70000}},
        {**base, "type": "progress", "id": "p-step-negative", "items": [{"step": -3, "total_steps": 9}]},
        {**base, "type": "log", "id": "p-seq-huge", "seq": 2**70, "lines": ["x"]},
        {**base, "type": "log", "id": "p-assignment-list", "assignment": [1], "lines": ["x"]},
        {**base, "type": "progress", "id": "p-step-int4", "items": [{"step": 2**40, "total_steps": 2**40}]},
    ]


async def _replies(comm, ids: set[str], timeout: float = 30) -> dict[str, dict]:
    """Each message's answer: {"ack": ...} or the error frame that refers to it."""
    answers: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while set(answers) < ids:
        frame = json.loads(await comm.receive_from(timeout=max(0.1, deadline - time.monotonic())))
        if frame["type"] == "ack":
            answers.update({i: frame for i in frame["ids"]})
        elif frame["type"] == "error":
            answers[frame["ref"]] = frame
    return answers


async def _interleaved(streams: list[tuple[str, list[dict]]]) -> dict[str, dict[str, dict]]:
    """Send the streams round-robin, one message each in turn, without waiting for replies
    (so that the ingest batches them together), then collect every answer."""
    comms = {token: connect(token) for token, _ in streams}
    for comm in comms.values():
        assert (await comm.connect())[0]
    try:
        for r in range(max(len(messages) for _, messages in streams)):
            for token, messages in streams:
                if r < len(messages):
                    await comms[token].send_to(text_data=json.dumps(messages[r]))
            await asyncio.sleep(0)
        return {token: await _replies(comms[token], {m["id"] for m in messages})
                for token, messages in streams}
    finally:
        for comm in comms.values():
            await comm.disconnect()


def test_a_poisoned_message_is_refused_alone_and_honest_agents_messages_apply_in_order():
    honest = [_assignment(token_node(token=f"cmn_honest_{i}"), status=A.RUNNING,
                          job_status=Job.Status.RUNNING) for i in range(2)]
    poisoner = _assignment(token_node(token="cmn_poisoner"), status=A.DISPATCHED,
                           job_status=Job.Status.MATCHING)
    poison = _poison(poisoner)
    streams = [("cmn_honest_0", _honest(honest[0], "h0", len(poison))),
               ("cmn_poisoner", poison),
               ("cmn_honest_1", _honest(honest[1], "h1", len(poison)))]

    answers = asyncio.run(_interleaved(streams))

    for token, _ in streams:
        if token == "cmn_poisoner":
            continue
        refused = {i: a for i, a in answers[token].items() if a["type"] != "ack"}
        assert refused == {}, f"{token}'s honest messages were refused: {refused}"
    for a, tag in zip(honest, ("h0", "h1"), strict=True):
        a.refresh_from_db()
        assert a.last_seq == len(poison)
        steps = list(MetricPoint.objects.filter(assignment=a).order_by("seq").values_list("step", flat=True))
        assert steps == list(range(1, len(poison) + 1, 2))
        lines = list(LogLine.objects.filter(assignment=a).order_by("seq").values_list("line", flat=True))
        assert lines == [f"{tag} line {s}" for s in range(2, len(poison) + 1, 2)]
    for message in poison:
        answer = answers["cmn_poisoner"][message["id"]]
        assert answer["type"] == "error", (message["id"], answer)
        assert answer["code"] in ("invalid", "malformed") and answer["message"], (message["id"], answer)
    poisoner.refresh_from_db()
    assert (poisoner.last_seq, poisoner.status, poisoner.rdzv_port) == (0, A.DISPATCHED, None)
    assert not LogLine.objects.filter(assignment=poisoner).exists()
    assert not MetricPoint.objects.filter(assignment=poisoner).exists()
    assert not poisoner.checkpoints.exclude(committed_at=None).exists()


def test_a_heartbeat_with_ids_out_of_range_is_answered_and_the_socket_survives():
    node = token_node(token="cmn_hb")
    a = _assignment(node, status=A.RUNNING, job_status=Job.Status.RUNNING)

    async def session():
        comm = connect("cmn_hb")
        assert (await comm.connect())[0]
        try:
            await comm.send_to(text_data=json.dumps({"type": "heartbeat", "id": "hb", "running": [
                2**70, -1, "99999999999999999999999", [1], a.pk], "unacked": [2**70, {"x": 1}]}))
            # Answered (nothing to say: it runs its one assignment), and still serving.
            await comm.send_to(text_data=json.dumps(_honest(a, "after", 1)[0]))
            return json.loads(await comm.receive_from(timeout=10))
        finally:
            await comm.disconnect()

    assert asyncio.run(session()) == {"type": "ack", "ack": "after-1", "ids": ["after-1"]}
    assert MetricPoint.objects.filter(assignment=a).count() == 1


def test_an_agent_that_keeps_sending_refused_messages_is_told_why_closed_and_kept_out_a_while(settings):
    """Refusals cost the ingest a transaction each: an agent that only sends garbage is closed
    after REFUSED_IN_A_ROW of them, told why, and its node refused at the handshake for a
    wait that doubles; another node is unaffected; an honest message resets the count."""
    from marketplace.consumers import agent as agent_socket

    bad, good = token_node("cmn_refused_bad"), token_node("cmn_refused_good")
    a = _assignment(good, status=A.RUNNING, job_status=Job.Status.RUNNING)
    limit = agent_socket.REFUSED_IN_A_ROW

    async def scenario():
        comm = connect("cmn_refused_bad")
        assert (await comm.connect())[0]
        codes = []
        for i in range(limit):
            await comm.send_to(text_data=json.dumps({"type": "log", "id": f"x{i}", "lines": 5}))
        while True:
            out = await comm.receive_output(timeout=10)
            if out["type"] == "websocket.close":
                closed_with = out.get("code")
                break
            codes.append(json.loads(out["text"])["code"])
        again = connect("cmn_refused_bad")
        refused_again = not (await again.connect())[0]
        honest = connect("cmn_refused_good")
        assert (await honest.connect())[0]
        await honest.send_to(text_data=json.dumps(_honest(a, "good", 1)[0]))
        ack = json.loads(await honest.receive_from(timeout=10))
        await honest.disconnect()
        shut = (agent_socket._limiter().shut_for(bad.pk), agent_socket._limiter().shut_for(good.pk))
        return codes, closed_with, refused_again, ack, shut

    codes, closed_with, refused_again, ack, (bad_wait, good_wait) = asyncio.run(scenario())
    assert codes.count("malformed") == limit and codes[-1] == "too_many_refused"
    assert closed_with == 4429 and refused_again
    assert ack["type"] == "ack"
    assert bad_wait > 0 and good_wait == 0
