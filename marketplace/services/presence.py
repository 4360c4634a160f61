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
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from ..models import Assignment, Node, Organization
from .agent_protocol import AgentRefused, assignment_ids
from .execution import agent_heartbeat, agent_hello
from .liveness import assignment_steps_record
from .nodes import node_set_presence

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
    """Apply each hello as `execution.agent_hello` does, all in one transaction with a
    savepoint each: the commit was most of a hello's cost (one at a time ~18 a second, in
    one transaction 54 a second: docs/BENCHMARKS.md). In node id order, the order every
    batch here locks nodes in. Returns, in the order of `hellos`, the messages for each agent
    or the exception that refused it (AgentRefused) or failed it; one hello's failure leaves
    the others' applied. Should the transaction itself fail (a lost connection, a deadlock
    with another process), each hello is applied again on its own."""
    order = sorted(range(len(hellos)), key=lambda i: hellos[i].node.pk)
    out: list[list[dict] | Exception] = [[] for _ in hellos]
    try:
        with transaction.atomic():
            for i in order:
                out[i] = _hello(hellos[i])
    except DatabaseError:
        log.warning("a batch of %d hellos failed; one at a time", len(hellos), exc_info=True)
        for i in order:
            out[i] = _hello(hellos[i])
    return out


def _hello(hello: Hello) -> list[dict] | Exception:
    try:
        with transaction.atomic():  # a savepoint in a batch: a failure rolls back this hello only
            return agent_hello(node=hello.node, hello=hello.message)
    except AgentRefused as exc:
        return exc
    except Exception as exc:  # its socket is closed; the agent connects again and says hello again
        log.exception("hello of node %s failed", hello.node.pk)
        return exc
