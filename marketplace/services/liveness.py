"""Each node's own training step, as its agent reports it with every heartbeat.

Only global rank 0 reports progress (the job's); the other nodes' agents tell their own
node's last step in `heartbeat.steps` (docs/agent-protocol.md), so the job page and the API
show per machine how far it got and since when it has not moved on.
"""

from typing import Any

from django.utils import timezone

from ..models import Assignment, Node

MAX_ID = 2**63 - 1  # assignment ids are bigint
MAX_STEP = 2**31 - 1  # the column is a PostgreSQL integer
MAX_ENTRIES = 1000


def node_steps_parse(value: Any) -> dict[int, int]:
    """`{"<assignment id>": step, …}` from an agent, validated: entries that are not a
    decimal id and a whole step in range are left out, as is anything that is not an object."""
    if not isinstance(value, dict):
        return {}
    out = {}
    for key, step in list(value.items())[:MAX_ENTRIES]:
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and 1 <= int(key) <= MAX_ID):
            continue
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            continue
        out[int(key)] = step
    return out


def assignment_steps_record(*, node: Node, steps: Any) -> int:
    """Store the step of each of this node's active assignments that the agent reports, with
    the time the platform first saw it (an unchanged step is not written again, so its time
    says since when the node has not moved on). Returns how many rows changed."""
    parsed = node_steps_parse(steps)
    now = timezone.now()
    changed = 0
    for assignment_id, step in sorted(parsed.items()):
        changed += (Assignment.objects.filter(pk=assignment_id, node=node, status__in=Assignment.ACTIVE)
                    .exclude(last_step=step).update(last_step=step, last_step_at=now))
    return changed
