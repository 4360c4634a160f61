"""Adding a machine with one command: the Add a machine page issues a one-time code for the
provider organization, and `computemesh-agent register --code …` redeems it with what the
agent measured, creating the node (and its agent token, returned this once) and a draft
offer, paused until the provider prices and publishes it."""

import hashlib
import secrets
from datetime import timedelta
from decimal import Decimal
from statistics import median
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import catalogue
from ..errors import MarketError, PermissionDenied
from ..models import Node, NodeRegistrationCode, Offer, Organization
from .audit import audit_record
from .claims import hardware_clean, model_matches
from .nodes import NodeSpec, node_create
from .offers import OfferSpec, offer_create

CODE_PREFIX = "cmr_"
CODE_TTL = timedelta(minutes=15)
DRAFT_REASON = "Draft from computemesh-agent register: set its price, then publish it (Resume)."
# The draft's price when no listing of the same GPU model is on the market to suggest one.
FALLBACK_PRICE = Decimal("1.00")


def _hash(code: str) -> str:
    # 192 random bits: a fast hash is enough, and only the hash is stored.
    return hashlib.sha256(code.encode()).hexdigest()


def registration_code_issue(*, provider: Organization, region: str,
                            actor=None) -> tuple[str, NodeRegistrationCode]:
    """A new code for `provider`'s next machine (shown once; valid for CODE_TTL, once)."""
    if not provider.is_provider:
        raise PermissionDenied("Only provider organizations can register machines.")
    if provider.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    if region not in catalogue.REGIONS:
        raise MarketError(f"Unknown region '{str(region)[:20]}'. Use a code such as EU-DE or US-CA.",
                          field="region")
    code = CODE_PREFIX + secrets.token_urlsafe(24)
    row = NodeRegistrationCode.objects.create(provider=provider, created_by=actor, code_hash=_hash(code),
                                              region=region, expires_at=timezone.now() + CODE_TTL)
    audit_record(actor=actor, action="node.registration_code", obj=provider,
                 message=f"One-time machine registration code issued (region {region}, valid "
                         f"{int(CODE_TTL.total_seconds() // 60)} minutes).")
    return code, row


def gpu_model_of(report: dict) -> tuple[str, int, int]:
    """(catalogue model, GPUs, memory per GPU in GB) of what the agent detected: the listed
    model every GPU's name matches, with the least memory reported; a CPU node's slots are
    its cores."""
    gpus = report.get("gpus") or []
    if not gpus:
        return catalogue.CPU, min(64, max(1, report.get("cpu_cores") or 1)), 0
    names = {g["name"] for g in gpus}
    candidates = [m for m in catalogue.GPU_MODELS if m != catalogue.CPU
                  and all(model_matches(m, name) for name in names)]
    least = min(g["memory_gb"] for g in gpus)
    # 'A100 40GB' and 'A100 80GB' both match an A100's name: the memory tells them apart.
    fitting = [m for m in candidates if catalogue.GPU_MODELS[m] * 0.9 <= least]
    if not fitting:
        raise MarketError(f"This machine's GPUs ({', '.join(sorted(names))}) are not a model the "
                          f"market lists ({', '.join(m for m in catalogue.GPU_MODELS if m != 'cpu')}).",
                          field="hardware")
    model = max(fitting, key=lambda m: catalogue.GPU_MODELS[m])
    return model, len(gpus), int(least)


def _suggested_price(gpu_model: str) -> Decimal:
    prices = list(Offer.objects.filter(status=Offer.Status.ACTIVE, gpu_model=gpu_model)
                  .values_list("price_per_gpu_hour", flat=True)[:500])
    return Decimal(median(prices)).quantize(Decimal("0.000001")) if prices else FALLBACK_PRICE


def registration_code_redeem(*, code: str, hardware: Any, benchmark_tflops: float | None,
                             name: str = "") -> tuple[Node, str, Offer]:
    """Create the machine the code was issued for, from the agent's report. Returns the node,
    its agent token (shown this once) and its draft offer. A code works once, before it
    expires, and only for the organization that asked for it."""
    report = hardware_clean(hardware)
    if not report:
        raise MarketError("The agent's hardware report is missing.", field="hardware")
    raw = hardware if isinstance(hardware, dict) else {}
    with transaction.atomic():
        row = (NodeRegistrationCode.objects.select_for_update().select_related("provider")
               .filter(code_hash=_hash(str(code)[:200])).first())
        if row is None:
            raise PermissionDenied("This registration code is not valid. Get a new one on the "
                                   "Add a machine page.")
        if row.used_at is not None:
            raise PermissionDenied("This registration code was already used. Get a new one on "
                                   "the Add a machine page.")
        if row.expires_at <= timezone.now():
            raise PermissionDenied("This registration code has expired. Get a new one on the "
                                   "Add a machine page.")
        # Listed with the catalogue model's memory (an 80 GB card reports 79.x GB).
        model, count, _least = gpu_model_of(report)
        disk = raw.get("disk_free_gb")
        spec = NodeSpec(
            name=name or str(raw.get("hostname") or "machine")[:60], gpu_model=model, gpu_count=count,
            gpu_memory_gb=None, cpu_cores=report.get("cpu_cores") or 1,
            ram_gb=report.get("ram_gb") or 1,
            disk_gb=disk if isinstance(disk, int) and not isinstance(disk, bool) and disk > 0 else 1,
            region=row.region)
        if Node.objects.filter(provider=row.provider, name=spec.name).exists():
            spec = NodeSpec(**{**spec.__dict__, "name": f"{spec.name[:60]}-{secrets.token_hex(2)}"})
        node, token = node_create(provider=row.provider, spec=spec, actor=row.created_by)
        if benchmark_tflops is not None and 0 <= benchmark_tflops < 10**6:
            Node.objects.filter(pk=node.pk).update(benchmark_tflops=Decimal(str(round(benchmark_tflops, 3))))
        offer = offer_create(provider=row.provider, node=node,
                             spec=OfferSpec(gpus_offered=node.gpu_count,
                                            price_per_gpu_hour=_suggested_price(model)))
        Offer.objects.filter(pk=offer.pk).update(status=Offer.Status.PAUSED, status_reason=DRAFT_REASON)
        offer.refresh_from_db()
        row.used_at, row.node = timezone.now(), node
        row.save(update_fields=["used_at", "node"])
        audit_record(actor=row.created_by, action="node.registered", obj=node,
                     message=f"Registered {node} with a one-time code; draft offer #{offer.pk} paused "
                             "until priced and published.")
    return node, token, offer
