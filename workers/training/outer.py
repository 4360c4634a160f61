"""DiLoCo's outer synchronisation between node leaders, through a c10d TCPStore that the
leader of node rank 0 (the host) serves at the address the platform gave the others.

Why not one process group across nodes: a dead peer breaks every collective of a static
group, so one lost machine would stop the job. Here each outer round has its own
membership: the host waits for the pseudo-gradients of the current members, drops a member
whose heartbeat stopped, averages what arrived and publishes the average with the next
round's members. A leader that (re)joins takes a ticket and is admitted after the next
round the host completes, with the global model and the outer optimizer state of that
round, so a replacement node needs no restart of the others.

Store keys:
  join_seq     counter; a leader that wants in takes a ticket (add 1)
  join/<t>     {"node_rank", "member", "digest", "step"} of ticket t
  admit/<t>    {"round", "step", "state"} (state: whether to read state/<round>), or
               {"finished": true} when the job ended before t could join
  state/<r>    global parameters (and outer momentum) after round r, fp32, for joiners
  hb/<t>       counter member t bumps every HEARTBEAT_S (liveness)
  g/<r>/<t>    member t's pseudo-gradient for round r, in the wire precision
  avg/<r>      the average pseudo-gradient of round r, in the wire precision, with the
               members of the next round
  bye/<t>      member t has read the final average (the host may close the store)

Byte accounting (`sent`): the messages above that a node puts on its link, exactly as
sent (JSON header + payload): a member its pseudo-gradients, its join record and its bye;
the host the averages and states its store hands to remote members. Store framing,
heartbeats (one 8-byte add a second) and TCP/IP headers are not included; the benchmark
measures those on the link itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from . import diloco

HOST = 0  # the host's own ticket
HEARTBEAT_S = 1.0
LIVENESS_EVERY_S = 0.25


def _json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class OuterError(RuntimeError):
    """This node can no longer take part (dropped by the host, or the host is gone)."""


class OuterHost:
    def __init__(self, *, port: int, precision: str, shapes: Sequence[torch.Size],
                 peer_timeout_s: float, log: Callable[[str], None] = print,
                 store_timeout_s: float = 300):
        # Listens on every interface; the host's own client talks to it over loopback.
        self.store = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=store_timeout_s),
                                   wait_for_workers=False)
        self.precision, self.shapes = precision, list(shapes)
        self.peer_timeout_s = peer_timeout_s
        self.log = log
        self.members: list[int] = []          # remote tickets taking part in the next round
        self.info: dict[int, dict] = {}
        self.next_ticket = 1
        self.sent = 0
        self._beats: dict[int, tuple[int, float]] = {}
        self._finishing: list[int] = []
        self._previous: int | None = None  # the last round (its step) whose keys are kept

    # --- membership ------------------------------------------------------------------
    def _waiting_joiners(self) -> list[int]:
        last = self.store.add("join_seq", 0)
        tickets, t = [], self.next_ticket
        while t <= last and self.store.check([f"join/{t}"]):
            tickets.append(t)
            t += 1
        return tickets

    def wait_for_joiners(self, count: int, timeout_s: float) -> None:
        """Before the first step: give the other nodes' leaders time to arrive."""
        deadline = time.monotonic() + timeout_s
        while len(self._waiting_joiners()) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def admit(self, *, round_: int, step: int, digest: str,
              state: Callable[[], tuple[dict, bytes]], finished: bool = False) -> list[int]:
        """Let waiting leaders in after `round_`: they start from this round's global model.
        A joiner whose parameters already equal it (same digest, no outer momentum yet: the
        job's start) does not download them."""
        tickets = self._waiting_joiners()
        if not tickets:
            return []
        self.next_ticket = tickets[-1] + 1
        if finished:
            for t in tickets:
                self.store.set(f"admit/{t}", _json({"finished": True}))
            self._finishing += tickets
            return tickets
        header, body = state()
        message = None
        for t in tickets:
            info = json.loads(self.store.get(f"join/{t}"))
            self.store.delete_key(f"join/{t}")
            need_state = not (info.get("digest") == digest and info.get("step") == step
                              and not header.get("momentum"))
            if need_state and message is None:
                message = diloco.pack({**header, "round": round_, "step": step}, body)
                self.store.set(f"state/{round_}", message)
                self._previous = round_
            admit = _json({"round": round_, "step": step, "state": need_state})
            self.store.set(f"admit/{t}", admit)
            self.sent += len(admit) + (len(message) if need_state else 0)
            self.info[t] = info
            self._beats[t] = (self.store.add(f"hb/{t}", 0), time.monotonic())
            self.members.append(t)
            self.log(f"outer: node rank {info.get('node_rank')} (member {info.get('member')}, "
                     f"ticket {t}) joins after round {round_} at step {step}"
                     + ("" if need_state else " with the model it already has"))
        return tickets

    def _alive(self, t: int) -> bool:
        beat = self.store.add(f"hb/{t}", 0)
        last, since = self._beats.get(t, (None, time.monotonic()))
        now = time.monotonic()
        if beat != last:
            self._beats[t] = (beat, now)
            return True
        return now - since < self.peer_timeout_s

    def label(self, t: int) -> str:
        return "0" if t == HOST else str(self.info.get(t, {}).get("node_rank", f"?{t}"))

    # --- one round ---------------------------------------------------------------------
    def exchange(self, round_: int, encoded: bytes, *, final: bool = False
                 ) -> tuple[list[torch.Tensor], dict]:
        """The average of the members' pseudo-gradients for `round_` (the host's own is
        `encoded`), as every node decodes it from the published bytes."""
        contributions = {HOST: diloco.decode(encoded, self.shapes, self.precision)}
        waiting, dropped = set(self.members), []
        while waiting:
            # Block in the store (no busy polling: the node's own ranks need the CPU) for
            # the first missing member, a quarter second at most, then look at all of them.
            try:
                self.store.wait([f"g/{round_}/{min(waiting)}"], timedelta(seconds=LIVENESS_EVERY_S))
            except dist.DistStoreError:
                pass
            for t in sorted(waiting):
                key = f"g/{round_}/{t}"
                if self.store.check([key]):
                    _, body = diloco.unpack(self.store.get(key))
                    self.store.delete_key(key)
                    contributions[t] = diloco.decode(body, self.shapes, self.precision)
                    waiting.discard(t)
                elif not self._alive(t):
                    waiting.discard(t)
                    dropped.append(t)
                    self.log(f"outer: node rank {self.label(t)} (ticket {t}) sent nothing for "
                             f"round {round_} and its heartbeat stopped; continuing without it")
        self.members = [t for t in self.members if t not in dropped]
        order = sorted(contributions)
        total = [torch.zeros(s) for s in self.shapes]
        for t in order:
            for acc, g in zip(total, contributions[t], strict=True):
                acc.add_(g)
        average = diloco.encode([acc / len(order) for acc in total], self.precision)
        header = {"round": round_, "final": final, "contributors": [self.label(t) for t in order],
                  "members": [HOST, *self.members]}
        message = diloco.pack(header, average)
        self.store.set(f"avg/{round_}", message)
        self.sent += len(message) * (len(order) - 1)
        # Everyone who took part in this round has read the previous average and state.
        if self._previous is not None and self._previous != round_:
            for key in (f"avg/{self._previous}", f"state/{self._previous}"):
                self.store.delete_key(key)
        self._previous = round_
        return diloco.decode(average, self.shapes, self.precision), header

    def finish(self, round_: int, *, timeout_s: float | None = None) -> None:
        """After the final round: tell late joiners the job is over and wait until every
        member has read the final average (or stopped beating) before the store closes."""
        waiting = set(self.members) | set(self._finishing)
        deadline = time.monotonic() + (timeout_s or 4 * self.peer_timeout_s)
        while waiting and time.monotonic() < deadline:
            for t in sorted(waiting):
                if self.store.check([f"bye/{t}"]) or not self._alive(t):
                    waiting.discard(t)
            time.sleep(0.02)

    def close(self) -> None:
        self.store = None  # the server stops with its last reference


class OuterMember:
    def __init__(self, *, host: str, port: int, precision: str, shapes: Sequence[torch.Size],
                 node_rank: int, member: str, digest: str, step: int,
                 connect_timeout_s: float = 120, wait_timeout_s: float = 900):
        timeout = timedelta(seconds=connect_timeout_s)
        self.store = dist.TCPStore(host, port, None, False, timeout)
        self.store.set_timeout(timedelta(seconds=wait_timeout_s))
        self.precision, self.shapes = precision, list(shapes)
        self.sent = 0
        self.ticket = self.store.add("join_seq", 1)
        record = _json({"node_rank": node_rank, "member": member, "digest": digest, "step": step})
        self._beat_store = dist.TCPStore(host, port, None, False, timeout)
        self._stop = threading.Event()
        self._beater = threading.Thread(target=self._beat, name="outer-heartbeat", daemon=True)
        self._beater.start()
        self.store.set(f"join/{self.ticket}", record)
        self.sent += len(record)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat_store.add(f"hb/{self.ticket}", 1)
            except Exception:  # the host is gone; the main thread finds out on its next call
                return
            self._stop.wait(HEARTBEAT_S)

    def join(self) -> dict | None:
        """Wait to be admitted. Returns {"round", "step", "params", "momentum"} (params None
        when this node's own are already the global ones), or None if the job has ended."""
        try:
            self.store.wait([f"admit/{self.ticket}"])
            admit = json.loads(self.store.get(f"admit/{self.ticket}"))
            if admit.get("finished"):
                self._bye()
                return None
            params = momentum = None
            if admit.get("state"):
                header, body = diloco.unpack(self.store.get(f"state/{admit['round']}"))
                shapes = self.shapes * (2 if header.get("momentum") else 1)
                tensors = diloco.decode(body, shapes, "fp32")
                params = tensors[:len(self.shapes)]
                momentum = tensors[len(self.shapes):] or None
        except dist.DistError as exc:
            raise OuterError(f"the host of the outer synchronisation is unreachable: {exc}") from None
        return {"round": admit["round"], "step": admit["step"], "params": params, "momentum": momentum}

    def exchange(self, round_: int, encoded: bytes, *, final: bool = False
                 ) -> tuple[list[torch.Tensor], dict]:
        message = diloco.pack({"round": round_}, encoded)
        try:
            self.store.set(f"g/{round_}/{self.ticket}", message)
            self.sent += len(message)
            self.store.wait([f"avg/{round_}"])
            header, body = diloco.unpack(self.store.get(f"avg/{round_}"))
        except dist.DistError as exc:
            raise OuterError(f"lost the host of the outer synchronisation in round {round_}: "
                             f"{str(exc).splitlines()[0]}") from None
        if header.get("final"):
            self._bye()
        elif self.ticket not in header["members"]:
            raise OuterError(f"the host dropped this node in round {round_} (it was too late)")
        return diloco.decode(body, self.shapes, self.precision), header

    def _bye(self) -> None:
        self.store.set(f"bye/{self.ticket}", b"1")
        self.sent += 1

    def close(self) -> None:
        self._stop.set()
