"""What a node's agent says it offers consumers' code (in its hello): the provider runtime
(workers/runtimes.json) a code bundle's job is matched against, and whether it can confine a
multi-node job's sandbox to the job's peers (workers/agent/peer_firewall.py)."""

import ipaddress

from ..models import Assignment, Node
from ..runtimes import agent_runtime


def node_runtime_report(*, node: Node, runtime) -> None:
    """Store the runtime the agent's hello named ("" when it named none or a malformed one)."""
    value = agent_runtime(runtime)
    if node.runtime != value:
        Node.objects.filter(pk=node.pk).update(runtime=value)
        node.runtime = value


def _ip(value) -> str:
    """An IP literal as the agent wrote it, or "" (a host name, or anything else)."""
    if not isinstance(value, str) or len(value) > 45:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return ""


def network_fields(*, sandbox, advertise_addr) -> tuple[bool, str]:
    """Whether the agent can confine multi-node sandboxes to their peers (only an explicit
    `"peer_firewall": true` counts) and the address it advertises to peers."""
    return isinstance(sandbox, dict) and sandbox.get("peer_firewall") is True, _ip(advertise_addr)


def node_network_report(*, node: Node, sandbox, advertise_addr) -> None:
    """Store network_fields() of the agent's hello."""
    firewall, address = network_fields(sandbox=sandbox, advertise_addr=advertise_addr)
    if (node.peer_firewall, node.advertise_addr) != (firewall, address):
        Node.objects.filter(pk=node.pk).update(peer_firewall=firewall, advertise_addr=address)
        node.peer_firewall, node.advertise_addr = firewall, address


def assignment_peers(assignment: Assignment) -> list[str]:
    """The addresses of the other nodes of the assignment's placement, as their agents
    advertise them: what its sandbox may connect to besides the rendezvous host."""
    others = (Assignment.objects.filter(job_id=assignment.job_id, attempt=assignment.attempt)
              .exclude(pk=assignment.pk).exclude(node__advertise_addr="")
              .values_list("node__advertise_addr", flat=True))
    return sorted(set(others))
