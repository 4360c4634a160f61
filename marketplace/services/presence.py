"""Agent heartbeats and hellos applied in batches (consumers/batches.py).

Heartbeats: what `execution.agent_heartbeat` does for each, in a handful of statements for
the whole batch instead of four or five for every heartbeat.

An idle node's heartbeat (the great majority: nothing running, nothing assigned) only moves
its `last_heartbeat_at`: one UPDATE for every online node in the batch. Nodes that are not
online yet (or suspended, or of a suspended organization) take the full path,
`nodes.node_set_presence`, which brings them online with its side effects or refuses; a node
with an active assignment, or whose agent says it runs something, gets the per-node
reconciliation of `agent_heartbeat` (resent starts, cancels, pauses, lost assignments).
The heartbeat watchdog reads the same column as before, so its semantics do not change:
a batch is written within milliseconds of its heartbeats (consumers/batches.py)."""

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from ..models import Assignment, Node, Organization
from ..runtimes import agent_runtime
from .agent_protocol import AgentRefused, agent_message, assignment_ids
from .claims import hardware_clean, nodes_hardware_check
from .execution import agent_heartbeat, agent_hello
from .liveness import assignment_steps_record
from .nodes import node_set_presence, nodes_came_online
from .provider_runtime import network_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hello:
    node: Node
    message: dict


@dataclass(frozen=True)
class Beat:
    node: Node
    running: list
    unacked: list | None
    steps: Any


def _touch_online(node_ids: list[int], now) -> set[int]:
    """Set the heartbeat time of those of `node_ids` that are online (and not of a suspended
    organization), locking them in id order (two batches never deadlock); returns their ids."""
    if connection.vendor != "postgresql":  # the demo's SQLite: one writer at a time, no locks
        online = list(Node.objects.filter(pk__in=node_ids, status=Node.Status.ONLINE,
                                          provider__is_suspended=False).values_list("pk", flat=True))
        Node.objects.filter(pk__in=online).update(last_heartbeat_at=now)
        return set(online)
    node, org = Node._meta.db_table, Organization._meta.db_table
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"UPDATE {node} SET last_heartbeat_at = %s WHERE id IN ("  # noqa: S608 (table names)
            f"  SELECT n.id FROM {node} n JOIN {org} o ON o.id = n.provider_id"
            f"  WHERE n.id = ANY(%s) AND n.status = %s AND NOT o.is_suspended ORDER BY n.id FOR UPDATE OF n"
            f") RETURNING id", [now, sorted(node_ids), Node.Status.ONLINE])
        return {row[0] for row in cur.fetchall()}


def heartbeats_record(beats: list[Beat]) -> list[list[dict]]:
    """Apply each heartbeat as `agent_heartbeat` would; returns the messages for each agent,
    in the order of `beats`. A failure for one node leaves the others' applied."""
    now = timezone.now()
    ids = sorted({b.node.pk for b in beats})
    try:
        touched = _touch_online(ids, now)
    except Exception:  # e.g. a lock timeout: every node takes the full path below
        log.warning("batched heartbeat update of %d nodes failed; one at a time", len(ids), exc_info=True)
        touched = set()
    busy = set(Assignment.objects.filter(node_id__in=ids, status__in=Assignment.ACTIVE)
               .values_list("node_id", flat=True).distinct())
    seen: set[int] = set()
    out: list[list[dict]] = []
    for beat in beats:
        node_id = beat.node.pk
        try:
            if node_id not in touched and node_id not in seen:
                node_set_presence(node_id=node_id, online=True, heartbeat_at=now)
            seen.add(node_id)
            if beat.steps:
                assignment_steps_record(node=beat.node, steps=beat.steps)
            if node_id in busy or assignment_ids(beat.running):
                out.append(agent_heartbeat(node=beat.node, running=beat.running, touch=False,
                                           unacked=beat.unacked))
            else:
                out.append([])
        except Exception:  # this node's next heartbeat tries again; the others go on
            log.exception("heartbeat of node %s failed", node_id)
            out.append([])
    return out


def hellos_record(hellos: list[Hello]) -> list[list[dict] | Exception]:
    """Apply each hello as `execution.agent_hello` does, all in one transaction: the idle
    ones (the great majority when a fleet comes back: nothing running, nothing assigned) in
    a handful of statements for the batch (_idle_hellos_record), the others one by one with
    a savepoint each. One at a time a hello of a node coming online was ~15 statements and
    a commit (docs/BENCHMARKS.md). Nodes are locked in id order, as the heartbeats' batches
    lock them. Returns, in the order of `hellos`, the messages for each agent or the
    exception that refused it (AgentRefused) or failed it; one hello's failure leaves the
    others' applied. Should the transaction itself fail (a lost connection, a deadlock with
    another process), each hello is applied again on its own."""
    order = sorted(range(len(hellos)), key=lambda i: hellos[i].node.pk)
    out: list[list[dict] | Exception] = [[] for _ in hellos]
    try:
        with transaction.atomic():
            welcomed = _idle_hellos_record(hellos)
            for i in order:
                out[i] = welcomed.get(i) or _hello(hellos[i])
    except DatabaseError:
        log.warning("a batch of %d hellos failed; one at a time", len(hellos), exc_info=True)
        for i in order:
            out[i] = _hello(hellos[i])
    return out


def _idle(message: dict) -> bool:
    return not any(message.get(k) for k in ("faults", "running", "unacked", "steps"))


def _idle_hellos_record(hellos: list[Hello]) -> dict[int, list[dict]]:
    """The idle hellos of a batch (no test faults, nothing running or unacknowledged) whose
    node is not suspended and has no active assignment, each applied as agent_hello would:
    presence, hardware, runtime and network written in one UPDATE, the nodes coming online
    brought online together, their offers checked against the hardware in one query. Returns
    {index in `hellos`: its messages}; the rest are for agent_hello. All or nothing (a savepoint)."""
    once = Counter(h.node.pk for h in hellos)
    candidates = {h.node.pk: i for i, h in enumerate(hellos) if once[h.node.pk] == 1 and _idle(h.message)}
    if not candidates:
        return {}
    try:
        with transaction.atomic():
            return _apply_idle(hellos, candidates)
    except Exception:  # each of them is applied on its own instead
        log.exception("the set-based path of %d hellos failed; one at a time", len(candidates))
        return {}


def _apply_idle(hellos: list[Hello], candidates: dict[int, int]) -> dict[int, list[dict]]:
    now = timezone.now()
    nodes = {n.pk: n for n in Node.objects.select_for_update(of=("self",))
             .filter(pk__in=sorted(candidates)).exclude(status=Node.Status.SUSPENDED)
             .exclude(provider__is_suspended=True).order_by("pk")}
    busy = Assignment.objects.filter(node_id__in=nodes, status__in=Assignment.ACTIVE)
    for node_id in busy.values_list("node_id", flat=True).distinct():
        del nodes[node_id]
    coming_online = [n for n in nodes.values() if n.status != Node.Status.ONLINE]
    for node in nodes.values():
        hello = hellos[candidates[node.pk]].message
        tflops, version = hello.get("benchmark_tflops"), str(hello.get("agent_version", ""))[:32]
        node.status = Node.Status.ONLINE
        node.last_heartbeat_at = node.updated_at = node.hardware_at = now
        if isinstance(tflops, int | float):
            node.benchmark_tflops = round(float(tflops), 3)
        node.agent_version = version or node.agent_version
        node.hardware = hardware_clean(hello.get("hardware"))
        node.runtime = agent_runtime(hello.get("runtime"))
        node.peer_firewall, node.advertise_addr = network_fields(sandbox=hello.get("sandbox"),
                                                                 advertise_addr=hello.get("advertise_addr"))
    if not nodes:
        return {}
    Node.objects.bulk_update(list(nodes.values()), _HELLO_FIELDS)
    if coming_online:
        nodes_came_online(coming_online)
    nodes_hardware_check(list(nodes.values()), when="when the node connected")
    return {candidates[node.pk]: [agent_message("welcome", node=node.pk, name=node.name,
                                                heartbeat_s=settings.AGENT_HEARTBEAT_S, assignments=[])]
            for node in nodes.values()}


_HELLO_FIELDS = ["status", "last_heartbeat_at", "benchmark_tflops", "agent_version", "hardware",
                 "hardware_at", "runtime", "peer_firewall", "advertise_addr", "updated_at"]


def _hello(hello: Hello) -> list[dict] | Exception:
    try:
        with transaction.atomic():  # a savepoint in a batch: a failure rolls back this hello only
            return agent_hello(node=hello.node, hello=hello.message)
    except AgentRefused as exc:
        return exc
    except Exception as exc:  # its socket is closed; the agent connects again and says hello again
        log.exception("hello of node %s failed", hello.node.pk)
        return exc
