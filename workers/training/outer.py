"""DiLoCo's outer synchronisation between node leaders: a bandwidth-balanced exchange of
pseudo-gradient chunks, coordinated through a c10d TCPStore that the leader of node rank 0
(the host) serves at the address the platform gave the others.

Why not one process group across nodes: a dead peer breaks every collective of a static
group, so one lost machine would stop the job. Here each outer round has its own
membership, decided by the host; a member that stops beating is left out, and a leader
that (re)joins takes a ticket and is admitted after the next round the host completes,
with that round's global model and outer optimizer state, so a replacement node needs no
restart of the others.

Why chunks: if one node averaged and handed the average to the n−1 others (a star), it
would send n−1 payloads a round while the others send one. Instead the flattened
parameters are cut into one chunk per member (`diloco.chunk_bounds`; member i of the round
owns chunk i) and every round is a reduce-scatter then an all-gather:
  1. every member pushes chunk j of its pseudo-gradient (encoded in the wire precision)
     into the inbox of chunk j's owner;
  2. every owner averages the contributions to its chunk, quantizes the average once and
     pushes those bytes into every other member's inbox;
  3. every member reports to the host which chunks it failed to get; the host publishes
     the round's verdict: the chunks to repair (their owner died or could not reach
     someone: every member sends that chunk to the host, which averages it, so that no
     node applies bytes another did not get) and the next round's members.
Every node sends 2·(n−1)/n of a payload a round (plus any repair), the host included;
every node applies the same bytes, so the global models stay bit-for-bit identical. Each
leader serves its own inbox, a TCPStore on a port it opens, advertised to the host in its
join record and by the host to the others with each round's membership.

Host store keys (small control messages, except the state a joiner downloads):
  join_seq     counter; a leader that wants in takes a ticket (add 1)
  join/<t>     {"node_rank", "member", "digest", "step", "addr"} of ticket t
  admit/<t>    {"round", "step", "state", "members"} (state: whether to read state/<round>;
               members: the first round's), or {"finished": true} when the job ended first
  state/<r>    global parameters (and outer momentum) after round r, fp32, for joiners
  hb/<t>       counter member t bumps every HEARTBEAT_S (liveness)
  nogo/<p>/<r>/<to>/<from>  `from` could not deliver its phase-p message of round r to `to`
  rep/<r>/<t>  member t's report: chunks it is missing, contributors of its own chunk
  round/<r>    the verdict of round r (repairs, contributors, next round's members)
  rg/<r>/<o>/<t>, fix/<r>/<o>  a repaired chunk o: member t's part, the host's average
  bye/<t>      member t has read the final verdict (the host may close the store)
Inbox keys (each leader's own store): g/<r>/<t> member t's part of this leader's chunk;
a/<r>/<o> owner o's averaged chunk.

Byte accounting (`sent`): every message above a node puts on its link, exactly as sent
(JSON header + payload), counted when the receiving store has taken it: pushed chunks,
join records, reports, repairs and byes; the host also counts the admissions, states,
verdicts and repaired chunks its store hands to remote members. Store framing, heartbeats
and polls (a few small requests a second while waiting) and TCP/IP headers are not
included; the benchmark measures those on the link itself.

One module on purpose, though long: the host and the member are the two ends of one
protocol (the keys above) and share its link code; reading them apart would hide it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from . import diloco

HOST = 0  # the host's own ticket
HEARTBEAT_S = 1.0
POLL_S = 0.5  # a waiting leader asks the host this often about the peers it waits for


def _json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def route_address(host: str, port: int) -> str:
    """This machine's address on the route to `host`: what a leader advertises when its
    agent named none (a UDP connect sends nothing)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.connect(address)
        return s.getsockname()[0]


class OuterError(RuntimeError):
    """This node can no longer take part (dropped by the host, or the host is gone)."""


class ForgedMessage(OuterError):
    """A value that does not carry a valid HMAC under the job's secret: refused undecoded."""


MAC_BYTES = 32


class SignedStore:
    """A c10d store whose values carry HMAC-SHA256(secret, key, value) ahead of them.

    TCPStore authenticates nobody and its server listens on every interface whatever host
    it is given, so whoever reaches its port can write any key. Under the job's secret,
    which the platform hands to this job's agents only, a forged or altered value (or a
    signed one moved to another key) is refused before it is decoded. What stays open:
    counters (`add`: join tickets, heartbeats) carry no MAC, and anyone can still delete or
    overwrite keys; that can stall a round or drop a node from it, never change the model
    the nodes apply. With no secret (runs outside the platform) values go as they are."""

    def __init__(self, store: dist.Store, secret: bytes | None):
        self.raw, self.secret = store, secret

    def _mac(self, key: str, value: bytes) -> bytes:
        assert self.secret is not None  # only signed stores compute MACs
        return hmac.new(self.secret, key.encode() + b"\0" + value, hashlib.sha256).digest()

    def set(self, key: str, value: bytes) -> None:
        value = bytes(value)
        # c10d stores take bytes as well as str; torch's stubs declare str only.
        self.raw.set(key, self._mac(key, value) + value if self.secret else value)  # type: ignore[arg-type]

    def get(self, key: str) -> bytes:
        raw = self.raw.get(key)
        if not self.secret:
            return raw
        mac, body = raw[:MAC_BYTES], raw[MAC_BYTES:]
        if len(raw) < MAC_BYTES or not hmac.compare_digest(mac, self._mac(key, body)):
            raise ForgedMessage(f"refused {key!r}: not signed with the job's secret")
        return body

    def __getattr__(self, name: str):  # check, wait, add, delete_key, port, set_timeout
        return getattr(self.raw, name)


class _Push(threading.Thread):
    """Messages for one peer's inbox, sent off the main thread so that a member pushes to
    every peer at once and a peer that hangs costs at most the transfer timeout."""

    def __init__(self, link: _Link, ticket: int, items: list[tuple[str, bytes]]):
        super().__init__(name=f"outer-push-{ticket}", daemon=True)
        self.link, self.ticket, self.items = link, ticket, items
        self.sent, self.reported = 0, False
        self.error: Exception | None = None
        self.began = time.monotonic()
        link._pushes = [p for p in link._pushes if p.is_alive()] + [self]
        self.start()

    def run(self) -> None:
        try:
            client = self.link._client(self.ticket)
            for key, message in self.items:
                client.set(key, message)
                self.sent += len(message)
        except Exception as exc:  # noqa: BLE001 - a peer we cannot reach is dropped for the round
            self.error = exc
            self.link._clients.pop(self.ticket, None)


class _Link:
    """What the host and the members share: this leader's inbox, connections to the other
    leaders' inboxes and the reduce-scatter / all-gather of one round."""

    ticket: int
    store: SignedStore  # the host's store: the coordinator

    def __init__(self, *, precision: str, shapes: Sequence[torch.Size], peer_timeout_s: float,
                 transfer_timeout_s: float | None, log: Callable[[str], None],
                 secret: bytes | None = None):
        self.secret = secret
        self.precision, self.shapes = precision, [torch.Size(s) for s in shapes]
        self.numels = [s.numel() for s in self.shapes]
        self.total = sum(self.numels)
        self.peer_timeout_s = peer_timeout_s
        self.transfer_timeout_s = transfer_timeout_s or max(60.0, 4 * peer_timeout_s)
        self.log = log
        self.sent = 0
        self.members: list[int] = []                    # this round's, HOST first
        self.addrs: dict[int, tuple[str, int]] = {}     # their inboxes
        self.labels: dict[int, str] = {HOST: "0"}       # their node ranks, for the logs
        self._clients: dict[int, SignedStore] = {}
        self._beats: dict[int, tuple[int, float]] = {}
        self._stale: tuple[int, list[int]] = (-1, [])
        self._pushes: list[_Push] = []

    inbox: SignedStore

    # --- peers ---------------------------------------------------------------------------
    def _client(self, t: int) -> SignedStore:
        client = self._clients.get(t)
        if client is None:
            host, port = self.addrs[t]
            client = SignedStore(dist.TCPStore(host, port, None, False,
                                               timedelta(seconds=self.peer_timeout_s)), self.secret)
            client.set_timeout(timedelta(seconds=self.transfer_timeout_s))
            self._clients[t] = client
        return client

    def _nogo(self, phase: str, round_: int, t: int) -> None:
        """Tell the host that this node's message of this phase will not reach t, so that t
        stops waiting for it (t may be waiting on this node while this node waits on t)."""
        self.store.set(f"nogo/{phase}/{round_}/{t}/{self.ticket}", b"1")
        self.sent += 1

    def _failed_pushes(self, pushes: Sequence[_Push], round_: int, phase: str, *, end: bool = False) -> None:
        now = time.monotonic()
        for push in pushes:
            overdue = push.is_alive() and (end or now - push.began > self.transfer_timeout_s)
            if push.reported or not (overdue or push.error is not None):
                continue
            push.reported = True
            self._nogo(phase, round_, push.ticket)
            self.log(f"outer: could not reach node rank {self.labels.get(push.ticket)} in round "
                     f"{round_}: {str(push.error or 'timed out').splitlines()[0]}")

    def _settle(self, pushes: list[_Push], round_: int, phase: str, *, gone: Sequence[int] = ()) -> None:
        """Wait for this phase's pushes (not for those to peers already given up as dead)
        and count what they delivered."""
        deadline = time.monotonic() + self.transfer_timeout_s
        for push in pushes:
            push.join(0 if push.ticket in gone else max(0.0, deadline - time.monotonic()))
        self._failed_pushes(pushes, round_, phase, end=True)
        self.sent += sum(push.sent for push in pushes)

    def _alive(self, t: int) -> bool:
        if t == HOST:  # the host's death shows up as an error on the next store call
            return True
        beat = self.store.add(f"hb/{t}", 0)
        last, since = self._beats.get(t, (None, time.monotonic()))
        now = time.monotonic()
        if beat != last:
            self._beats[t] = (beat, now)
            return True
        return now - since < self.peer_timeout_s

    def _round_over(self, round_: int) -> None:
        """Members: raise when the host closed the round without this node."""

    def _collect(self, keys: dict[int, str], round_: int, phase: str, pushes: Sequence[_Push] = ()
                 ) -> tuple[dict[int, bytes], list[int]]:
        """One message from each peer into this node's inbox. A peer whose heartbeat stopped,
        or which told the host it could not reach this node, is given up for this round.
        Meanwhile this node's own failed `pushes` of the phase are reported."""
        got: dict[int, bytes] = {}
        waiting = dict(keys)
        while waiting:
            # Block in the inbox (no busy polling: the node's own ranks need the CPU).
            try:
                self.inbox.wait([waiting[min(waiting)]], timedelta(seconds=POLL_S))
            except dist.DistStoreError:
                pass
            for t in sorted(waiting):
                if self.inbox.check([waiting[t]]):
                    key = waiting.pop(t)
                    try:
                        got[t] = self.inbox.get(key)
                    except ForgedMessage as exc:
                        # Someone without the job's secret wrote (or overwrote) t's message:
                        # t is left out of this round; its chunk goes the repair way.
                        self.log(f"outer: {exc}; node rank {self.labels.get(t, t)} left out of "
                                 f"round {round_}")
                    self.inbox.delete_key(key)
            if not waiting:
                break
            self._failed_pushes(pushes, round_, phase)
            self._round_over(round_)
            for t in sorted(waiting):
                marker = f"nogo/{phase}/{round_}/{self.ticket}/{t}"
                if self.store.check([marker]):
                    self.store.delete_key(marker)
                    why = "it could not reach this node"
                elif not self._alive(t):
                    why = "its heartbeat stopped"
                else:
                    continue
                del waiting[t]
                self.log(f"outer: gave up on node rank {self.labels.get(t, t)} in round {round_} ({why})")
        return got, sorted(set(keys) - set(got))

    def _learn(self, members: list) -> None:
        """A round's membership as the host publishes it: [[ticket, host, port, label], …];
        the host's own inbox is the store this node already talks to."""
        self.members = [int(m[0]) for m in members]
        for t, host, port, label in members:
            self.labels[int(t)] = str(label)
            if int(t) != HOST:
                self.addrs[int(t)] = (host, int(port))
            elif self.ticket != HOST:
                self.addrs[HOST] = self._host_addr
        for t in self.members:
            self._beats.pop(t, None)
        self._connect_peers()

    def _connect_peers(self) -> None:
        """Connect now, between rounds, rather than in the round's push threads (besides
        the time it saves, c10d clients connecting from several threads at once were seen
        to stall for seconds here)."""
        for t in self.members:
            if t != self.ticket and t not in self._clients:
                try:
                    self._client(t)
                except dist.DistError:
                    pass  # the round's push tries again and reports it

    _host_addr: tuple[str, int]

    def _phases(self, round_: int, flat: torch.Tensor
                ) -> tuple[torch.Tensor, dict[int, list[int]], list[int]]:
        """Reduce-scatter then all-gather of `flat` among this round's members. Returns the
        averaged vector (zeros where a chunk is missing), the contributors of each chunk
        that arrived (by owner) and the owners whose chunk did not."""
        me, members = self.ticket, self.members
        bounds = dict(zip(members, diloco.chunk_bounds(self.total, len(members)), strict=True))
        pieces = {t: diloco.chunk_pieces(self.numels, lo, hi) for t, (lo, hi) in bounds.items()}
        others = [t for t in members if t != me]

        def part(t: int) -> bytes:
            lo, hi = bounds[t]
            return diloco.encode_chunk(flat[lo:hi], pieces[t], self.precision)

        # 1. Reduce-scatter: my part of each chunk to its owner; the others' parts of mine.
        pushes = [_Push(self, t, [(f"g/{round_}/{me}", diloco.pack({"round": round_}, part(t)))])
                  for t in others]
        got, gone = self._collect({t: f"g/{round_}/{t}" for t in others}, round_, "g", pushes)
        contributions = {me: diloco.decode_chunk(part(me), pieces[me], self.precision)}
        for t, message in got.items():
            contributions[t] = diloco.decode_chunk(diloco.unpack(message)[1], pieces[me], self.precision)
        self._settle(pushes, round_, "g", gone=gone)
        order = sorted(contributions)
        total = torch.zeros(bounds[me][1] - bounds[me][0])
        for t in order:  # a fixed order: the sum does not depend on arrival times
            total.add_(contributions[t])
        mine = diloco.encode_chunk(total / len(order), pieces[me], self.precision)

        # 2. All-gather: my averaged chunk, quantized once, to everyone I did not give up on.
        message = diloco.pack({"round": round_, "contributors": order}, mine)
        pushes = [_Push(self, t, [(f"a/{round_}/{me}", message)]) for t in others if t not in gone]
        for t in gone:
            self._nogo("a", round_, t)
        average = torch.zeros(self.total)
        lo, hi = bounds[me]
        average[lo:hi] = diloco.decode_chunk(mine, pieces[me], self.precision)
        chunks = {me: order}
        got, missing = self._collect({t: f"a/{round_}/{t}" for t in others}, round_, "a", pushes)
        for t, received in got.items():
            header, body = diloco.unpack(received)
            lo, hi = bounds[t]
            average[lo:hi] = diloco.decode_chunk(body, pieces[t], self.precision)
            chunks[t] = header["contributors"]
        self._settle(pushes, round_, "a", gone=missing)
        return average, chunks, missing

    def _finish_round(self, round_: int, verdict: dict, average: torch.Tensor,
                      fixes: dict[int, tuple[torch.Tensor, list[int]]]) -> tuple[list[torch.Tensor], dict]:
        bounds = dict(zip(self.members, diloco.chunk_bounds(self.total, len(self.members)), strict=True))
        contributors = {int(t) for ts in verdict["chunks"].values() for t in ts}
        for o, (values, who) in fixes.items():
            lo, hi = bounds[o]
            average[lo:hi] = values
            contributors |= set(who)
        labels = {**self.labels, **{int(t): v for t, v in verdict["labels"].items()}}
        header = {"round": round_, "final": verdict["final"],
                  "contributors": [labels.get(t, str(t)) for t in sorted(contributors)],
                  "members": [int(m[0]) for m in verdict["members"]], "repaired": sorted(fixes)}
        # Parts that came too late (from a member given up) would stay in the inbox: clear
        # this round's and, for stragglers, the previous round's.
        for r, members in ((round_, self.members), self._stale):
            for t in members:
                for key in (f"g/{r}/{t}", f"a/{r}/{t}"):
                    self.inbox.delete_key(key)
        self._stale = (round_, list(self.members))
        out, at = [], 0
        for shape, n in zip(self.shapes, self.numels, strict=True):
            out.append(average[at:at + n].clone().reshape(shape))
            at += n
        if not verdict["final"]:
            self._learn(verdict["members"])
        return out, header

    def _flat(self, pseudo: Sequence[torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([p.detach().float().reshape(-1).cpu() for p in pseudo])
        if flat.numel() != self.total:
            raise ValueError(f"{flat.numel()} values do not fit the model's {self.total} parameters")
        return flat

    def _drain(self) -> None:
        """Before the process exits: a push still connecting to a lost peer would abort the
        interpreter's shutdown."""
        for push in self._pushes:
            push.join(self.peer_timeout_s + 1)
        self._clients.clear()

    def _bounds_of(self, o: int) -> tuple[tuple[int, int], list[int]]:
        lo, hi = dict(zip(self.members, diloco.chunk_bounds(self.total, len(self.members)), strict=True))[o]
        return (lo, hi), diloco.chunk_pieces(self.numels, lo, hi)


class OuterHost(_Link):
    def __init__(self, *, port: int, precision: str, shapes: Sequence[torch.Size],
                 peer_timeout_s: float, log: Callable[[str], None] = print,
                 store_timeout_s: float = 300, transfer_timeout_s: float | None = None,
                 secret: bytes | None = None):
        super().__init__(precision=precision, shapes=shapes, peer_timeout_s=peer_timeout_s,
                         transfer_timeout_s=transfer_timeout_s, log=log, secret=secret)
        # Listens on every interface; the host's own client talks to it over loopback. It is
        # the coordinator and the host's inbox at once.
        self.store = SignedStore(dist.TCPStore("127.0.0.1", port, None, True,
                                               timedelta(seconds=store_timeout_s),
                                               wait_for_workers=False), secret)
        self.inbox = self.store
        self.ticket = HOST
        self.members = [HOST]
        self.info: dict[int, dict] = {}
        self.next_ticket = 1
        self._selected: list[int] | None = None  # joiners the last verdict let in
        self._finishing: list[int] = []
        self._previous: tuple[int, list[int]] | None = None  # the last round and its repairs

    # --- membership ------------------------------------------------------------------
    def _waiting_joiners(self) -> list[int]:
        last = self.store.add("join_seq", 0)
        tickets, t = [], self.next_ticket
        while t <= last and self.store.check([f"join/{t}"]):
            tickets.append(t)
            t += 1
        return tickets

    def _take(self, tickets: list[int]) -> list[int]:
        """Read the join records of `tickets`; returns those let in (a forged record is not)."""
        taken = []
        for t in tickets:
            try:
                self.info[t] = json.loads(self.store.get(f"join/{t}"))
            except ForgedMessage as exc:
                self.log(f"outer: join ticket {t} refused: {exc}")
                self.store.delete_key(f"join/{t}")
                continue
            self.store.delete_key(f"join/{t}")
            taken.append(t)
            self.labels[t] = str(self.info[t].get("node_rank", f"?{t}"))
            self.addrs[t] = tuple(self.info[t]["addr"])
        if tickets:
            self.next_ticket = tickets[-1] + 1
        return taken

    def _roster(self, tickets: Sequence[int]) -> list:
        return [[t, *(self.addrs[t] if t != HOST else (None, None)), self.labels[t]] for t in tickets]

    def wait_for_joiners(self, count: int, timeout_s: float) -> None:
        """Before the first step: give the other nodes' leaders time to arrive."""
        deadline = time.monotonic() + timeout_s
        while len(self._waiting_joiners()) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def admit(self, *, round_: int, step: int, digest: str,
              state: Callable[[], tuple[dict, bytes]], finished: bool = False) -> list[int]:
        """Let in the leaders the last verdict named (at the start: every one waiting); they
        start from this round's global model. A joiner whose parameters already equal it
        (same digest, no outer momentum yet: the job's start) does not download them."""
        if finished:
            tickets = self._waiting_joiners()
            self.next_ticket = tickets[-1] + 1 if tickets else self.next_ticket
            for t in tickets:
                self.store.set(f"admit/{t}", _json({"finished": True}))
            self._finishing += tickets
            return tickets
        if self._selected is None:  # the job's start
            tickets = self._take(self._waiting_joiners())
            self.members = [HOST, *tickets]
        else:
            tickets = self._selected
        self._selected = None
        self._connect_peers()
        if not tickets:
            return []
        header, body = state()
        roster = self._roster(self.members)
        message: bytes | None = None
        for t in tickets:
            info = self.info[t]
            need_state = not (info.get("digest") == digest and info.get("step") == step
                              and not header.get("momentum"))
            if need_state and message is None:
                message = diloco.pack({**header, "round": round_, "step": step}, body)
                self.store.set(f"state/{round_}", message)
            admit = _json({"round": round_, "step": step, "state": need_state, "members": roster})
            self.store.set(f"admit/{t}", admit)
            self.sent += len(admit) + (len(message) if need_state and message is not None else 0)
            self._beats[t] = (self.store.add(f"hb/{t}", 0), time.monotonic())
            self.log(f"outer: node rank {info.get('node_rank')} (member {info.get('member')}, "
                     f"ticket {t}) joins after round {round_} at step {step}"
                     + ("" if need_state else " with the model it already has"))
        return tickets

    def label(self, t: int) -> str:
        return self.labels.get(t, f"?{t}")

    # --- one round ---------------------------------------------------------------------
    def exchange(self, round_: int, pseudo: Sequence[torch.Tensor], *, final: bool = False
                 ) -> tuple[list[torch.Tensor], dict]:
        """The average of the members' pseudo-gradients for `round_` (the host's own is
        `pseudo`), as every node decodes it from the same bytes."""
        flat = self._flat(pseudo)
        average, chunks, missing = self._phases(round_, flat)
        reports, silent = self._collect({t: f"rep/{round_}/{t}" for t in self.members if t != HOST},
                                        round_, "rep")
        for t in silent:
            self.log(f"outer: node rank {self.label(t)} (ticket {t}) did not finish round {round_} "
                     "and its heartbeat stopped (or it was unreachable); continuing without it")
        repair = set(missing)
        for message in reports.values():
            report = json.loads(message)
            repair |= set(report["missing"])
            chunks.update({int(o): who for o, who in report["chunks"].items()})
        survivors = sorted(reports)
        next_members = [HOST, *survivors]
        if not final:
            self._selected = self._take(self._waiting_joiners())
            next_members += self._selected
        verdict = {"round": round_, "final": final, "repair": sorted(repair),
                   "chunks": {str(o): who for o, who in chunks.items() if o not in repair},
                   "members": self._roster(next_members),
                   "labels": {str(t): self.label(t) for t in self.members}}
        message = _json(verdict)
        self.store.set(f"round/{round_}", message)
        self.sent += len(message) * len(survivors)
        fixes = {o: self._repair(round_, o, flat, survivors) for o in sorted(repair)}
        self._forget_previous(round_, sorted(repair))
        result = self._finish_round(round_, verdict, average, fixes)
        if final:  # finish() waits for these to read the verdict
            self.members = next_members
        return result

    def _repair(self, round_: int, o: int, flat: torch.Tensor, survivors: list[int]
                ) -> tuple[torch.Tensor, list[int]]:
        """Chunk o the star way, through this store: its owner died or could not reach
        everyone, so the survivors send their part of it here and read the average back."""
        (lo, hi), pieces = self._bounds_of(o)
        got, _ = self._collect({t: f"rg/{round_}/{o}/{t}" for t in survivors}, round_, "rg")
        parts = {HOST: diloco.decode_chunk(diloco.encode_chunk(flat[lo:hi], pieces, self.precision),
                                           pieces, self.precision)}
        for t, message in got.items():
            parts[t] = diloco.decode_chunk(diloco.unpack(message)[1], pieces, self.precision)
        order = sorted(parts)
        total = torch.zeros(hi - lo)
        for t in order:
            total.add_(parts[t])
        body = diloco.encode_chunk(total / len(order), pieces, self.precision)
        message = diloco.pack({"round": round_, "contributors": order}, body)
        self.store.set(f"fix/{round_}/{o}", message)
        self.sent += len(message) * len(survivors)
        self.log(f"outer: chunk of node rank {self.label(o)} repaired through the host in round "
                 f"{round_} ({len(order)} contributors)")
        return diloco.decode_chunk(body, pieces, self.precision), order

    def _forget_previous(self, round_: int, repaired: list[int]) -> None:
        # Everyone who reported this round has read the previous verdict, fixes and state.
        if self._previous is not None and self._previous[0] != round_:
            prev, fixed = self._previous
            for key in (f"round/{prev}", f"state/{prev}", *(f"fix/{prev}/{o}" for o in fixed)):
                self.store.delete_key(key)
        self._previous = (round_, repaired)

    def finish(self, round_: int, *, timeout_s: float | None = None) -> None:
        """After the final round: tell late joiners the job is over and wait until every
        member has read the final verdict (or stopped beating) before the store closes."""
        waiting = (set(self.members) - {HOST}) | set(self._finishing)
        deadline = time.monotonic() + (timeout_s or 4 * self.peer_timeout_s)
        while waiting and time.monotonic() < deadline:
            for t in sorted(waiting):
                if self.store.check([f"bye/{t}"]) or not self._alive(t):
                    waiting.discard(t)
            time.sleep(0.02)

    def close(self) -> None:
        self._drain()
        if hasattr(self, "store"):  # the server stops with its last reference
            del self.store, self.inbox


class OuterMember(_Link):
    def __init__(self, *, host: str, port: int, precision: str, shapes: Sequence[torch.Size],
                 node_rank: int, member: str, digest: str, step: int,
                 advertise_host: str | None = None, inbox_port: int = 0,
                 advertise_port: int | None = None,
                 peer_timeout_s: float = 15, transfer_timeout_s: float | None = None,
                 connect_timeout_s: float = 120, wait_timeout_s: float = 900,
                 log: Callable[[str], None] = print, secret: bytes | None = None):
        super().__init__(precision=precision, shapes=shapes, peer_timeout_s=peer_timeout_s,
                         transfer_timeout_s=transfer_timeout_s, log=log, secret=secret)
        timeout = timedelta(seconds=connect_timeout_s)
        self.store = SignedStore(dist.TCPStore(host, port, None, False, timeout), secret)
        self.store.set_timeout(timedelta(seconds=wait_timeout_s))
        self._host_addr = (host, port)
        # This leader's inbox: the others push its chunk's parts and their averages here.
        # (c10d's server listens on every interface whatever host it is given: the MACs, not
        # the bind address, keep strangers' bytes out; see docs/architecture.md.)
        self.inbox = SignedStore(dist.TCPStore("0.0.0.0", inbox_port, None, True,
                                               timedelta(seconds=wait_timeout_s),
                                               wait_for_workers=False), secret)
        # advertise_port: a port forwarded to the inbox (behind NAT); by default its own.
        addr = [advertise_host or route_address(host, port), advertise_port or self.inbox.port]
        self.ticket = self.store.add("join_seq", 1)
        record = _json({"node_rank": node_rank, "member": member, "digest": digest, "step": step,
                        "addr": addr})
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
        self._learn(admit["members"])
        return {"round": admit["round"], "step": admit["step"], "params": params, "momentum": momentum}

    def _round_over(self, round_: int) -> None:
        if self.store.check([f"round/{round_}"]):
            verdict = json.loads(self.store.get(f"round/{round_}"))
            if verdict["final"]:
                self._bye()
            raise OuterError(f"the host dropped this node in round {round_} (it was too late)")

    def exchange(self, round_: int, pseudo: Sequence[torch.Tensor], *, final: bool = False
                 ) -> tuple[list[torch.Tensor], dict]:
        try:
            flat = self._flat(pseudo)
            average, chunks, missing = self._phases(round_, flat)
            report = _json({"missing": missing, "chunks": {str(o): who for o, who in chunks.items()}})
            self.store.set(f"rep/{round_}/{self.ticket}", report)
            self.sent += len(report)
            self.store.wait([f"round/{round_}"])
            verdict = json.loads(self.store.get(f"round/{round_}"))
            if self.ticket not in [int(m[0]) for m in verdict["members"]] and not verdict["final"]:
                raise OuterError(f"the host dropped this node in round {round_} (it was too late)")
            fixes = {}
            for o in verdict["repair"]:
                (lo, hi), pieces = self._bounds_of(o)
                body = diloco.encode_chunk(flat[lo:hi], pieces, self.precision)
                part = diloco.pack({"round": round_}, body)
                self.store.set(f"rg/{round_}/{o}/{self.ticket}", part)
                self.sent += len(part)
            for o in verdict["repair"]:
                (lo, hi), pieces = self._bounds_of(o)
                self.store.wait([f"fix/{round_}/{o}"])
                header, body = diloco.unpack(self.store.get(f"fix/{round_}/{o}"))
                fixes[o] = (diloco.decode_chunk(body, pieces, self.precision), header["contributors"])
        except dist.DistError as exc:
            raise OuterError(f"lost the host of the outer synchronisation in round {round_}: "
                             f"{str(exc).splitlines()[0]}") from None
        result = self._finish_round(round_, verdict, average, fixes)
        if verdict["final"]:
            self._bye()
        return result

    def _bye(self) -> None:
        self.store.set(f"bye/{self.ticket}", b"1")
        self.sent += 1

    def close(self) -> None:
        # The inbox server stops with this object (peers may still be pushing to it).
        self._stop.set()
        self._drain()
