"""The provider runtime a node offers (its agent names it in its hello, from
workers/runtimes.json): what a code bundle's job is matched against."""

from ..models import Node
from ..runtimes import agent_runtime


def node_runtime_report(*, node: Node, runtime) -> None:
    """Store the runtime the agent's hello named ("" when it named none or a malformed one)."""
    value = agent_runtime(runtime)
    if node.runtime != value:
        Node.objects.filter(pk=node.pk).update(runtime=value)
        node.runtime = value
