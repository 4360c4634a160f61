import hashlib
import os
import secrets
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from .. import catalogue
from ..errors import MarketError, NotFound, PermissionDenied
from ..models import ComplianceEvidence, Node, Offer, Organization
from ..text import clean_name, clean_text
from . import enqueue, live, reputation
from .audit import audit_record

TOKEN_PREFIX = "cmn_"


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough; only the hash is stored.
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> tuple[str, str, str]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token), token[:10]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpu_model: str
    gpu_count: int
    gpu_memory_gb: int | None
    cpu_cores: int
    ram_gb: int
    disk_gb: int
    region: str
    compliance: tuple[str, ...] = ()
    bandwidth_mbps: int | None = None


def _validate(spec: NodeSpec) -> dict:
    name = clean_name(spec.name)
    if not name or len(name) > 80:
        raise MarketError("Name the node (1 to 80 characters).", field="name")
    model = catalogue.validate_gpu_model(spec.gpu_model)
    memory = spec.gpu_memory_gb
    if model == catalogue.CPU:
        memory = 0
    elif memory is None:
        memory = catalogue.GPU_MODELS[model]
    elif memory < 1 or memory > 1024:
        raise MarketError("GPU memory must be between 1 and 1024 GB per GPU.",
                          field="gpu_memory_gb")
    for field, value, top in (("gpu_count", spec.gpu_count, 64), ("cpu_cores", spec.cpu_cores, 4096),
                              ("ram_gb", spec.ram_gb, 65536), ("disk_gb", spec.disk_gb, 10**7)):
        if value is None or value < 1 or value > top:
            raise MarketError(f"{field.replace('_', ' ')} must be between 1 and {top}.",
                              field=field)
    if spec.region not in catalogue.REGIONS:
        raise MarketError(f"Unknown region '{str(spec.region)[:20]}'. Use a code such as "
                          "EU-DE or US-CA.", field="region")
    return {
        "name": name, "gpu_model": model, "gpu_count": spec.gpu_count, "gpu_memory_gb": memory,
        "cpu_cores": spec.cpu_cores, "ram_gb": spec.ram_gb, "disk_gb": spec.disk_gb,
        "region": spec.region, "bandwidth_mbps": spec.bandwidth_mbps,
        "compliance_claimed": catalogue.compliance_mask(list(spec.compliance)),
    }


# The node's searchable attributes its offers carry (the search table), besides node_online.
_SYNCED = ("provider_id", "gpu_model", "gpu_memory_gb", "region", "compliance_verified", "reliability")


def _sync_offers_of(node_ids: list[int]) -> None:
    """Copy the nodes' searchable attributes, as saved, onto their offers, in one UPDATE
    (UPDATE … FROM: PostgreSQL, and the demo's SQLite since 3.33)."""
    if not node_ids:
        return
    offer, node = Offer._meta.db_table, Node._meta.db_table
    copied = ", ".join(f"{c} = n.{c}" for c in _SYNCED)
    ids = ", ".join(["%s"] * len(node_ids))
    with connection.cursor() as cur:
        cur.execute(f"UPDATE {offer} SET {copied}, node_online = (n.status = %s), updated_at = %s "  # noqa: S608
                    f"FROM {node} n WHERE {offer}.node_id = n.id AND n.id IN ({ids})",
                    [Node.Status.ONLINE, timezone.now(), *node_ids])


def node_create(*, provider: Organization, spec: NodeSpec, actor=None) -> tuple[Node, str]:
    """Register a machine. Returns the node and its agent token, shown this once."""
    if not provider.is_provider:
        raise PermissionDenied("Only provider organizations can register nodes.")
    if provider.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    fields = _validate(spec)
    if Node.objects.filter(provider=provider, name=fields["name"]).exists():
        raise MarketError("You already have a node with this name.", field="name")
    token, token_hash, prefix = _new_token()
    with transaction.atomic():
        node = Node.objects.create(provider=provider, token_hash=token_hash,
                                   token_prefix=prefix, **fields)
        audit_record(actor=actor, action="node.create", obj=node,
                     message=f"Registered {node}")
    return node, token


def node_update(*, node: Node, spec: NodeSpec, actor=None) -> Node:
    fields = _validate(spec)
    if Node.objects.filter(provider=node.provider, name=fields["name"]).exclude(pk=node.pk).exists():
        raise MarketError("You already have a node with this name.", field="name")
    offered = sum(node.offers.values_list("gpus_offered", flat=True))
    if fields["gpu_count"] < offered:
        raise MarketError(f"Your offers on this node list {offered} GPUs; reduce them first.",
                          field="gpu_count")
    with transaction.atomic():
        before = Node.objects.select_for_update().get(pk=node.pk)
        claimed = fields["compliance_claimed"]
        for key, value in fields.items():
            setattr(node, key, value)
        # A tag dropped from the claims is no longer verified either.
        node.compliance_verified = before.compliance_verified & claimed
        # An auditor verified a machine in a place, with its hardware, run by its provider:
        # another region, GPU model or provider is another machine as far as the tags go.
        moved = [(name, old, new) for name, old, new in (
            ("region", before.region, node.region), ("gpu_model", before.gpu_model, node.gpu_model),
            ("provider", before.provider_id, node.provider_id)) if old != new]
        if moved and node.compliance_verified:
            dropped = catalogue.compliance_tags(node.compliance_verified)
            node.compliance_verified = 0
            changes = "; ".join(f"{name} {old} → {new}" for name, old, new in moved)
            audit_record(actor=actor, action="node.compliance_unverified", obj=node,
                         message=f"Verified tags {', '.join(dropped)} of {node.name} dropped to "
                                 f"unverified: {changes}.",
                         data={"tags": dropped, "changes": {n: [str(o), str(v)] for n, o, v in moved}})
        node.save()
        _sync_offers_of([node.pk])
    return node


def node_rotate_token(*, node: Node, actor=None) -> str:
    token, token_hash, prefix = _new_token()
    with transaction.atomic():
        Node.objects.filter(pk=node.pk).update(token_hash=token_hash, token_prefix=prefix)
        audit_record(actor=actor, action="node.rotate_token", obj=node,
                     message="Agent token rotated; the old one stops working.")
    node.token_hash, node.token_prefix = token_hash, prefix
    return token


def node_by_token(token: str) -> Node:
    node = Node.objects.select_related("provider").filter(token_hash=hash_token(token)).first()
    if node is None or node.status == Node.Status.SUSPENDED or node.provider.is_suspended:
        raise NotFound("Unknown or revoked agent token.")
    return node


def node_suspend(*, node: Node, actor, reason: str = "") -> Node:
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        node.status = Node.Status.SUSPENDED
        node.save(update_fields=["status", "updated_at"])
        _sync_offers_of([node.pk])
        Offer.objects.filter(node=node, status=Offer.Status.ACTIVE).update(
            status=Offer.Status.PAUSED)
        audit_record(actor=actor, action="node.suspend", obj=node,
                     message=f"Suspended {node.name}: {reason or 'no reason given'}")
    return node


def node_unsuspend(*, node: Node, actor) -> Node:
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        if node.status != Node.Status.SUSPENDED:
            return node
        node.status = Node.Status.OFFLINE
        node.save(update_fields=["status", "updated_at"])
        _sync_offers_of([node.pk])
        audit_record(actor=actor, action="node.unsuspend", obj=node,
                     message=f"Lifted the suspension of {node.name}")
    return node


EVIDENCE_MAX_BYTES = 10 * 1_048_576
MIN_EVIDENCE_NOTE = 10


def node_verify_compliance(*, node: Node, tags: list[str], actor, document, note: str) -> Node:
    """A staff member confirms some of the node's claimed tags on evidence: a document (an
    audit report, a certificate; `document` is an uploaded file) and a note saying what was
    checked. Both are kept (ComplianceEvidence) with who verified which tags when, and the
    verification is audited."""
    mask = catalogue.compliance_mask(tags)
    if not tags:
        raise MarketError("Choose the tags to verify.", field="tags")
    if mask & ~node.compliance_claimed:
        raise MarketError("Only tags the provider claims can be verified.", field="tags")
    note = clean_text(note)
    if len(note) < MIN_EVIDENCE_NOTE:
        raise MarketError(f"Say what you checked (a note of at least {MIN_EVIDENCE_NOTE} characters).",
                          field="note")
    if document is None or not getattr(document, "size", 0):
        raise MarketError("Attach the evidence: the audit report or certificate you checked.",
                          field="document")
    if document.size > EVIDENCE_MAX_BYTES:
        raise MarketError(f"The document is larger than {EVIDENCE_MAX_BYTES // 1_048_576} MB.",
                          field="document")
    name = clean_name(getattr(document, "name", "") or "evidence")[:200]
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        node.compliance_verified |= mask
        node.save(update_fields=["compliance_verified", "updated_at"])
        _sync_offers_of([node.pk])
        staff = actor if getattr(actor, "is_authenticated", False) else None
        evidence = ComplianceEvidence(node=node, tags=list(tags), note=note[:2000], document_name=name,
                                      verified_by=staff)
        # A random stored name: the uploader's file name is only shown, never used as a path.
        evidence.document.save(f"{secrets.token_hex(16)}{_extension(name)}", document, save=False)
        evidence.save()
        audit_record(actor=actor, action="node.verify_compliance", obj=node,
                     message=f"Verified {', '.join(tags)} on {node.name} on evidence #{evidence.pk} "
                             f"({name}): {note[:300]}",
                     data={"tags": list(tags), "evidence": evidence.pk, "document": name})
    return node


def _extension(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return ext if ext in (".pdf", ".png", ".jpg", ".jpeg", ".txt") else ".bin"


def node_set_presence(*, node_id: int, online: bool, heartbeat_at=None,
                      benchmark_tflops: Decimal | float | None = None, agent_version: str = "") -> None:
    """Used by the agent connection and the heartbeat watchdog."""
    with transaction.atomic():
        node = Node.objects.select_for_update(of=("self",)).select_related("provider").get(pk=node_id)
        # A heartbeat already on its way when the organization was suspended does not bring
        # the node back (services/suspension.py).
        if node.status == Node.Status.SUSPENDED or (online and node.provider.is_suspended):
            return
        was_online = node.status == Node.Status.ONLINE
        node.status = Node.Status.ONLINE if online else Node.Status.OFFLINE
        if heartbeat_at is not None:
            node.last_heartbeat_at = heartbeat_at
        if benchmark_tflops is not None:
            node.benchmark_tflops = benchmark_tflops
        if agent_version:
            node.agent_version = agent_version[:32]
        # Every heartbeat comes here: write the presence columns, not the whole row.
        node.save(update_fields=["status", "last_heartbeat_at", "benchmark_tflops", "agent_version",
                                 "updated_at"])
        if online and not was_online:
            nodes_came_online([node])
        elif was_online and not online:
            reputation.uptime_closed(node_id=node.pk)
            _sync_offers_of([node.pk])
            live.nodes_changed([node])


def nodes_came_online(nodes: list[Node]) -> None:
    """What happens when nodes come online, one (node_set_presence) or a batch of hellos
    (services/presence.py): their uptime stretches opened, their offers synced and shown
    online, dashboards told, waiting jobs retried."""
    ids = [node.pk for node in nodes]
    reputation.uptimes_opened(node_ids=ids)
    _sync_offers_of(ids)
    live.nodes_changed(nodes)
    enqueue.rematch_soon()


def node_spec_validate(*, spec: NodeSpec, provider: Organization, node: Node | None = None) -> None:
    """Raise MarketError naming the field when node_create/node_update would refuse `spec`;
    forms (e.g. the admin) call it before writing so that errors land on the form."""
    fields = _validate(spec)
    others = Node.objects.filter(provider=provider, name=fields["name"])
    if node is not None:
        others = others.exclude(pk=node.pk)
    if others.exists():
        raise MarketError("You already have a node with this name.", field="name")
    if node is not None:
        offered = sum(node.offers.values_list("gpus_offered", flat=True))
        if fields["gpu_count"] < offered:
            raise MarketError(f"Your offers on this node list {offered} GPUs; reduce them "
                              "first.", field="gpu_count")
