"""Hardware claims checked against what the node's agent measures (issue 12, item 12).

A provider lists a node's GPUs (model, count, memory) and sells them in offers; the agent
measures the machine (`hello.hardware`: torch's device list) and benchmarks it. Both are the
provider's word, but the listing is what consumers pay for, and until now nothing compared
the two: a node could list 8× H100, run on less, and bill the budget. Here:
- `node_hardware_report` (every `hello`) stores the validated report and compares it with
  each active offer of the node;
- `assignment_claims_check` (every `assignment.accepted`) compares the offer the assignment
  was placed on with the last report (an offer raised after the node connected is caught
  there);
- an offer that lists more than the report shows — fewer GPUs of its model, another model,
  less memory per GPU — is taken off the market (`paused`, `status_reason` says why, shown
  to the provider and staff) and audited (`offer.claims_mismatch`); the provider edits the
  offer down or fixes the machine, then resumes the offer, which is checked again.
CPU nodes sell training slots (processes), not devices: there is nothing to compare.
Delivered throughput far below the benchmark is judged in services/reputation.py.
"""

import re
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..models import Assignment, Node, Offer
from . import audit, live

# torch reports a GPU's usable memory in GiB, rounded: an "80GB" card shows 79 or 80, a
# "40GB" one 39; a card with less than this share of the listed memory is another card.
MEMORY_SHARE = 0.9
MAX_GPUS = 64


# A CUDA or driver version as agents report them ("12.4", "550.54.15"): shown to consumers
# in the offers list, so nothing else (markup, control characters) is kept.
VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,31}")


def hardware_clean(raw: Any) -> dict:
    """The agent's `hardware`, validated: only what is compared (and the CUDA and driver
    versions the offers list shows) is kept, bounded."""
    if not isinstance(raw, dict) or not isinstance(raw.get("gpus"), list):
        return {}  # no report: compared as such (an agent that does not say is not believed)
    gpus: list[dict[str, Any]] = []
    for g in raw["gpus"]:
        if len(gpus) >= MAX_GPUS or not isinstance(g, dict):
            break
        memory = g.get("memory_gb")
        gpus.append({"name": str(g.get("name", ""))[:80],
                     "memory_gb": float(memory) if isinstance(memory, int | float)
                     and not isinstance(memory, bool) and 0 <= memory <= 10_000 else 0.0})
    out: dict[str, Any] = {"gpus": gpus, "gpu_count": len(gpus)}
    for key in ("cpu_cores", "ram_gb"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**7:
            out[key] = value
    for key in ("cuda", "driver"):
        value = raw.get(key)
        if isinstance(value, str) and VERSION.fullmatch(value.strip()):
            out[key] = value.strip()
    return out


def _words(name: str) -> set[str]:
    return set(re.split(r"[\s\-_/]+", name.upper())) - {""}


def model_matches(listed: str, reported: str) -> bool:
    """'A100 80GB' is an 'NVIDIA A100-SXM4-80GB'; 'L4' is not an 'NVIDIA L40S': every word of
    the listed model but its memory size is a whole word of the device's name."""
    wanted = {w for w in _words(listed) if not re.fullmatch(r"\d+GB", w)}
    return bool(wanted) and wanted <= _words(reported)


def mismatches(node: Node, offers: list[Offer], hardware: dict) -> dict[int, str]:
    """{offer id: why it lists more than the report shows}, the GPUs of the report shared
    out among the offers in order (two offers of 4 on a 4-GPU machine: the second fails)."""
    if node.is_cpu or not offers:
        return {}
    gpus = hardware.get("gpus") or []
    names = ", ".join(sorted({g["name"] for g in gpus})) or "no GPU"
    same_model = [g for g in gpus if model_matches(node.gpu_model, g["name"])]
    big_enough = [g for g in same_model if g["memory_gb"] >= node.gpu_memory_gb * MEMORY_SHARE]
    free, out = len(big_enough), {}
    for offer in offers:
        if not hardware:
            out[offer.pk] = "its agent reported no hardware"
        elif not same_model:
            out[offer.pk] = f"it lists {node.gpu_model} GPUs; the agent reports {names}"
        elif offer.gpus_offered > free and len(big_enough) < len(same_model):
            least = min(g["memory_gb"] for g in same_model)
            out[offer.pk] = (f"it lists {offer.gpus_offered} {node.gpu_model} GPUs of "
                             f"{node.gpu_memory_gb} GB; the agent reports {len(big_enough)} with that much "
                             f"(the least: {least:g} GB)")
        elif offer.gpus_offered > free:
            out[offer.pk] = (f"it lists {offer.gpus_offered} {node.gpu_model} GPUs"
                             + (f" beside {len(big_enough) - free} in other offers" if free < len(big_enough)
                                else "")
                             + f"; the agent reports {len(big_enough)}")
        else:
            free -= offer.gpus_offered
    return out


def _take_off(offers: list[Offer], why: dict[int, str], *, when: str) -> list[Offer]:
    taken = []
    for offer in offers:
        if offer.pk not in why:
            continue
        reason = f"Off the market: {why[offer.pk]} (checked {when})."[:500]
        if not Offer.objects.filter(pk=offer.pk, status=Offer.Status.ACTIVE).update(
                status=Offer.Status.PAUSED, status_reason=reason, updated_at=timezone.now()):
            continue  # paused meanwhile: nothing to take off
        offer.status, offer.status_reason = Offer.Status.PAUSED, reason
        audit.audit_record(actor=None, action="offer.claims_mismatch", obj=offer, message=reason,
                           data={"node": offer.node_id, "provider": offer.provider_id, "when": when,
                                 "why": why[offer.pk]})
        taken.append(offer)
    if taken:
        live.offers_changed([o.pk for o in taken])
    return taken


def node_hardware_report(*, node: Node, hardware: Any) -> list[Offer]:
    """Store what the agent's `hello` reports and take off the market each active offer
    of the node that lists more. Returns the offers taken off."""
    report = hardware_clean(hardware)
    with transaction.atomic():
        Node.objects.filter(pk=node.pk).update(hardware=report, hardware_at=timezone.now())
        node.hardware = report
        offers = list(Offer.objects.select_for_update().filter(node=node, status=Offer.Status.ACTIVE)
                      .order_by("pk"))
        return _take_off(offers, mismatches(node, offers, report), when="when the node connected")


def nodes_hardware_check(nodes: list[Node], *, when: str) -> list[Offer]:
    """node_hardware_report's comparison for many nodes whose `hardware` is already stored
    (a batch of hellos): their active offers read and locked in one query."""
    offers: dict[int, list[Offer]] = {}
    active = Offer.objects.select_for_update().filter(node__in=nodes, status=Offer.Status.ACTIVE)
    for offer in active.order_by("pk"):
        offers.setdefault(offer.node_id, []).append(offer)
    taken: list[Offer] = []
    for node in nodes:
        mine = offers.get(node.pk, [])
        taken += _take_off(mine, mismatches(node, mine, node.hardware), when=when)
    return taken


def node_offers_recheck(*, node: Node, when: str) -> list[Offer]:
    """Compare the node's active offers with its last report (none yet: checked when its
    agent connects). Run when an offer is listed or changed, so that a listing raised
    while the agent is connected does not wait for an accepted assignment to be caught."""
    node = Node.objects.get(pk=node.pk)
    if node.hardware_at is None:
        return []
    offers = list(Offer.objects.select_for_update().filter(node=node, status=Offer.Status.ACTIVE)
                  .order_by("pk"))
    return _take_off(offers, mismatches(node, offers, node.hardware), when=when)


def assignment_claims_check(assignment: Assignment) -> str | None:
    """When a node accepts an assignment: does the offer it was placed on still fit what
    the node reported? Returns why not (the offer is then off the market), else None."""
    node = Node.objects.get(pk=assignment.node_id)
    if node.hardware_at is None:  # no hello yet (a real agent always sends one): checked on it
        return None
    offer = Offer.objects.select_for_update().get(pk=assignment.offer_id)
    others = list(Offer.objects.filter(node=node, status=Offer.Status.ACTIVE).exclude(pk=offer.pk)
                  .order_by("pk"))
    # This offer first: the assignment is placed on it, whatever the node's other listings.
    why = mismatches(node, [offer, *others], node.hardware)
    if offer.pk not in why:
        return None
    if offer.status == Offer.Status.ACTIVE:
        _take_off([offer], why, when=f"when the node accepted assignment {assignment.pk}")
    else:  # paused by its provider meanwhile: still audited, so staff see the claim
        audit.audit_record(actor=None, action="offer.claims_mismatch", obj=offer, message=why[offer.pk],
                           data={"node": node.pk, "provider": offer.provider_id, "why": why[offer.pk],
                                 "when": f"assignment {assignment.pk}"})
    return why[offer.pk]


def offer_resume_check(offer: Offer) -> str | None:
    """Why an offer may not go back on the market (its node's last report shows less), or
    None. A node that has not connected yet is checked when it does."""
    offer = Offer.objects.select_related("node").get(pk=offer.pk)  # as listed now, not as the caller saw it
    node = offer.node
    if not node.hardware_at:
        return None
    others = list(Offer.objects.filter(node=node, status=Offer.Status.ACTIVE).exclude(pk=offer.pk)
                  .order_by("pk"))
    return mismatches(node, [*others, offer], node.hardware).get(offer.pk)

