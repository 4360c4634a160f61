"""Suspending an organization turns it off, from the admin and the API alike.

A suspended organization's agents are disconnected and refused (node_by_token), their
heartbeats no longer bring a node online (node_set_presence), its offers leave the market
with the reason, the work its machines were doing ends and is resumed on other machines, and
it can register no node, change no offer and submit no job (the services and
selectors.accounts refuse it). Lifting the suspension lets its agents connect again; its
offers stay paused until the provider resumes them, as after a node's own suspension."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from ..errors import MarketError
from ..models import Node, Offer, Organization
from . import execution, live
from .agent_protocol import node_group
from .audit import audit_record
from .nodes import node_set_presence

CLOSE_SUSPENDED = 4403  # the code the agent socket closes with (docs/agent-protocol.md)


def _disconnect(node_ids: list[int], reason: str) -> None:
    """Close the nodes' agent sockets, wherever they are connected: each socket listens on
    its node's group (consumers/agent.py, `agent_close`)."""
    layer = get_channel_layer()
    if layer is None:
        return
    for node_id in node_ids:
        async_to_sync(layer.group_send)(node_group(node_id),
                                        {"type": "agent.close", "code": CLOSE_SUSPENDED, "reason": reason})


def organization_suspend(*, organization: Organization, actor, reason: str) -> Organization:
    reason = (reason or "").strip()
    if not reason:
        raise MarketError("Say why the organization is suspended.", field="reason")
    if len(reason) > 500:
        raise MarketError("The reason is at most 500 characters.", field="reason")
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        if org.is_suspended:
            return org
        org.is_suspended = True
        org.save(update_fields=["is_suspended"])
        # From here on its agents are refused and their heartbeats ignored (services/nodes.py).
        offers = list(Offer.objects.filter(provider=org, status=Offer.Status.ACTIVE)
                      .values_list("pk", flat=True))
        Offer.objects.filter(pk__in=offers).update(
            status=Offer.Status.PAUSED, status_reason=f"The provider is suspended: {reason}"[:500],
            updated_at=timezone.now())
        nodes = list(Node.objects.filter(provider=org).values_list("pk", flat=True))
        stopped = 0
        for node_id in nodes:
            node_set_presence(node_id=node_id, online=False)
            stopped += execution.node_assignments_stop(
                node_id=node_id, reason=f"its provider was suspended: {reason}"[:200])
        audit_record(actor=actor, action="organization.suspend", obj=org,
                     message=f"Suspended {org.name}: {reason}",
                     data={"reason": reason, "offers_paused": offers, "nodes": nodes,
                           "assignments_stopped": stopped})
        live.offers_changed(offers)
        transaction.on_commit(lambda: _disconnect(nodes, f"Your organization was suspended: {reason}"))
    organization.is_suspended = True
    return org


def organization_unsuspend(*, organization: Organization, actor) -> Organization:
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        if not org.is_suspended:
            return org
        org.is_suspended = False
        org.save(update_fields=["is_suspended"])
        audit_record(actor=actor, action="organization.unsuspend", obj=org,
                     message=f"Lifted the suspension of {org.name}; its offers stay paused until "
                             "the provider resumes them.")
    organization.is_suspended = False
    return org
