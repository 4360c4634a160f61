"""Who is at fault for work that failed its check, and the disputes that say so.

A dispute is attributed (its node slashed, to the treasury, and left out of the job) only
when the finding can be pinned on a node without trusting another party's word: see
`attribute`. Otherwise it is opened unattributed on rank 0's assignment for staff, and
every node of the attempt sits out the job's next placement, with no reputation cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import task_names
from ..models import Assignment, Dispute, Job, VerificationReport
from . import enqueue

SLASH_TASK = task_names.DISPUTE_SLASH
# Findings about what node rank 0 alone produced: its uploads, its commitments, its metric.
RANK0_OWN = {Dispute.Reason.METRIC_INFLATED, Dispute.Reason.ARTIFACT_MISMATCH,
             Dispute.Reason.CHECKPOINT_UNCOMMITTED}


@dataclass
class Finding:
    reason: str  # a Dispute.Reason
    detail: str



def attribution_notes(attribution: dict | None) -> list[str]:
    if not attribution:
        return []
    if attribution["ranks"]:
        return [f"attribution: {attribution['detail']}"]
    return [f"attribution: nobody named ({attribution['detail']})"]


def ranks_of(parts: list[Assignment], ranks: list[int]) -> list[Assignment]:
    """The assignments that ran these global ranks: node rank r holds the ranks after those
    of node ranks 0..r−1, one per GPU (torchrun's static rendezvous)."""
    out, first = [], 0
    for a in sorted(parts, key=lambda p: p.node_rank):
        if any(first <= r < first + a.gpus for r in ranks):
            out.append(a)
        first += a.gpus
    return out


def attribute(parts: list[Assignment], findings: list[Finding],
              attribution: dict | None = None, *,
              consumer_code: bool = False) -> tuple[Finding, list[Assignment]]:
    """The finding the dispute is named by, and the assignments at fault (none: the dispute
    is not attributed, and nobody is slashed without staff).
    - Rank 0's own products (uploads, commitments, its metric) are its own in any job.
    - A replay mismatch of an attempt on one node is that node's.
    - A replay mismatch of a DDP attempt across nodes is pinned on the nodes whose ranks the
      replay of the per-rank gradient commitments named (workers/training/replay.py
      attribute_segment: only when every node's copy of them agrees and the named ranks
      stand out from the others at the first step that differs); otherwise on nobody.
    - A job that runs the consumer's own code (a code bundle) is replayed and evaluated by
      that code, which its author could make disagree on the verifier alone: there only what
      needs none of it (a checkpoint not committed in time) is pinned on a node, and the rest
      goes to staff, so no consumer gets an honest provider slashed through its own task."""
    rank0 = next(a for a in parts if a.node_rank == 0)
    if consumer_code:
        for f in findings:
            if f.reason == Dispute.Reason.CHECKPOINT_UNCOMMITTED:
                return f, [rank0]
        return findings[0], []
    single = len({a.node_rank for a in parts}) <= 1
    for f in findings:
        if f.reason in RANK0_OWN or (single and f.reason == Dispute.Reason.REPLAY_MISMATCH):
            return f, [rank0]
    mismatch = next((f for f in findings if f.reason == Dispute.Reason.REPLAY_MISMATCH), None)
    if mismatch is not None and attribution and attribution["ranks"]:
        culprits = ranks_of(parts, attribution["ranks"])
        return Finding(mismatch.reason, f"{mismatch.detail} {attribution['detail']}"), culprits
    return findings[0], []


def dispute_open(job: Job, parts: list[Assignment], named: Finding, at_fault: list[Assignment],
             findings: list[Finding], *, report: VerificationReport | None) -> Dispute:
    """The attempt's disputes for its bad work: one per node at fault (its slash queued), or
    one unattributed dispute on rank 0's assignment; and the nodes that do not run this job
    again. Returns the first."""
    rank0 = next(a for a in parts if a.node_rank == 0)
    evidence = [named, *(f for f in findings if f is not named)]
    disputes = []
    for a in at_fault or [rank0]:
        dispute, created = Dispute.objects.get_or_create(
            assignment=a, reason=named.reason,
            defaults={"job": job, "provider_id": a.node.provider_id, "verification": report,
                      "attributed": bool(at_fault),
                      "detail": " ".join(f.detail for f in evidence)[:2000]})
        if created and at_fault:
            enqueue.enqueue(SLASH_TASK, dispute.pk)
        disputes.append(dispute)
    if at_fault:
        leave_out = [a.node_id for a in at_fault]
    elif named.reason == Dispute.Reason.VERIFICATION_ERROR:
        leave_out = []  # nothing is known against the nodes
    else:  # the work was bad but its author is unknown: none of them runs this job again
        leave_out = [a.node_id for a in parts]
    missing = [n for n in leave_out if n not in job.excluded_nodes]
    if missing:
        job.excluded_nodes = [*job.excluded_nodes, *missing]
        job.save(update_fields=["excluded_nodes", "updated_at"])
    return disputes[0]


def whose_work(parts: list[Assignment], at_fault: list[Assignment]) -> str:
    if at_fault:
        nodes = ", ".join(str(a.node_id) for a in at_fault)
        return f"node {nodes}'s work" if len(at_fault) == 1 else f"the work of nodes {nodes}"
    return (f"the work of nodes {', '.join(str(a.node_id) for a in parts)} (it cannot be "
            "pinned on one of them: nobody is slashed automatically, staff review it)")
