"""Issue 13 item 1: the DiLoCo exchange authenticates its peers. Every value the node
leaders put in each other's c10d stores carries an HMAC-SHA256 under the job's secret
(which the platform hands to this job's agents only); a message without it is refused
before it is decoded. Real TCPStores over real sockets."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from workers.agent.launcher import free_port
from workers.training import diloco, group, outer

from .test_diloco import SHAPES, run_all, same, state_of, vec

SECRET = secrets.token_bytes(32)


def a_host(secret=SECRET, log=None):
    return outer.OuterHost(port=free_port(), precision="fp32", shapes=SHAPES, peer_timeout_s=3,
                           log=log or (lambda _: None), secret=secret)


def a_member(host, node_rank, secret=SECRET, log=None):
    return outer.OuterMember(host="127.0.0.1", port=host.store.port, precision="fp32",
                             shapes=SHAPES, node_rank=node_rank, member=f"a{node_rank}",
                             digest="same", step=0, connect_timeout_s=10, wait_timeout_s=20,
                             peer_timeout_s=3, log=log or (lambda _: None), secret=secret)


def raw_client(port: int) -> dist.TCPStore:
    """A stranger on the network: it reaches the store, but has no secret."""
    return dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=5))


def test_a_forged_value_is_refused_and_a_signed_one_read():
    server = dist.TCPStore("127.0.0.1", free_port(), None, True, timedelta(seconds=5),
                           wait_for_workers=False)
    signed = outer.SignedStore(server, SECRET)
    signed.set("round/3", b'{"final":false}')
    assert signed.get("round/3") == b'{"final":false}'
    raw_client(server.port).set("round/4", b'{"final":true}')  # no MAC
    with pytest.raises(outer.ForgedMessage):
        signed.get("round/4")
    outer.SignedStore(raw_client(server.port), b"another job's secret").set("round/5", b"{}")
    with pytest.raises(outer.ForgedMessage):
        signed.get("round/5")
    # A genuine value moved to another key (a replay) does not pass either.
    raw_client(server.port).set("round/6", server.get("round/3"))
    with pytest.raises(outer.ForgedMessage):
        signed.get("round/6")


def test_a_forged_join_record_is_not_admitted():
    logs: list[str] = []
    host = a_host(log=logs.append)
    try:
        stranger = raw_client(host.store.port)
        ticket = stranger.add("join_seq", 1)
        stranger.set(f"join/{ticket}", json.dumps(
            {"node_rank": 1, "member": "x", "digest": "same", "step": 0,
             "addr": ["127.0.0.1", 1]}).encode())
        honest = a_member(host, 2)
        host.wait_for_joiners(2, timeout_s=10)
        admitted = host.admit(round_=0, step=0, digest="same", state=state_of(vec(0)))
        assert admitted == [honest.ticket] and ticket not in host.members
        assert any("refused" in line for line in logs)
        honest.close()
    finally:
        host.close()


def test_a_forged_chunk_in_an_inbox_is_refused_and_the_round_still_agrees():
    logs: list[str] = []
    host = a_host(log=logs.append)
    a, b = a_member(host, 1), a_member(host, 2)
    try:
        host.wait_for_joiners(2, timeout_s=10)
        host.admit(round_=0, step=0, digest="same", state=state_of(vec(0)))
        run_all(a.join, b.join)
        # A stranger fills a's inbox with its own "part" of a's chunk from b for round 10,
        # claiming a huge pseudo-gradient (what a poisoning attack would send).
        lo, hi = diloco.chunk_bounds(a.total, 3)[1]
        pieces = diloco.chunk_pieces(a.numels, lo, hi)
        poison = diloco.pack({"round": 10}, diloco.encode_chunk(torch.full((hi - lo,), 1e6), pieces, "fp32"))
        raw_client(a.inbox.port).set(f"g/10/{b.ticket}", poison)
        results = run_all(*(lambda n=n, g=g: n.exchange(10, g)
                            for n, g in [(host, vec(1.0)), (a, vec(2.0)), (b, vec(6.0))]))
        averages = [avg for avg, _ in results]
        assert all(same(averages[0], avg) for avg in averages[1:])  # all apply the same bytes
        # Nothing of the stranger's 1e6 got in: every value is an average of honest inputs.
        assert all(float(t.abs().max()) <= 6.0 for t in averages[0])
    finally:
        a.close()
        b.close()
        host.close()


def test_the_rendezvous_store_prefix_depends_on_the_jobs_secret():
    assert group.store_prefix(None, "0") == "computemesh/attempt_0"
    mine, other = group.store_prefix(SECRET, "0"), group.store_prefix(b"x" * 32, "0")
    assert mine != other and mine.endswith("/attempt_0") and SECRET.hex() not in mine
