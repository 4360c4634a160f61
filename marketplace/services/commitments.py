"""Per-rank gradient commitments of DDP attempts across nodes: received from each node's
agent, checked at the boundary, kept per assignment, and handed to the verifier.

The runtime (workers/training/commitments.py) makes them: at every step each rank's own
gradient and the parameters, projected onto K vectors; at each checkpoint every node's
leader writes every rank's numbers since the last one, and its agent uploads that stretch
here. Each node's copy is kept apart: the verifier names a rank only when every node's
copy says the same about it (attribution.attribute), so a node's word about another node
never stands alone. Plain numbers only: nothing here needs torch.
"""

from __future__ import annotations

import json
import math
import re

from django.db import IntegrityError, transaction

from ..errors import Conflict, MarketError
from ..models import Assignment, GradientCommitment, Job
from ..selectors.execution import is_diloco

K = 3  # workers/training/commitments.K (tests/test_commitment_upload.py keeps them equal)
MAX_BYTES = 4 * 1_048_576  # one stretch's upload: ~40 bytes a number, so ~10⁴ rank-steps
MAX_STEPS = 100_000
FIELDS = {"step", "grad", "param", "model"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MarketError(f"{where} must be a finite number.", field="body")
    return float(value)


def _ranks(value, world: int, where: str) -> list[list[float]]:
    if not isinstance(value, list) or len(value) != world:
        raise MarketError(f"{where} must hold {world} ranks' values.", field="body")
    out = []
    for rank, numbers in enumerate(value):
        if not isinstance(numbers, list) or len(numbers) != K:
            raise MarketError(f"{where}, rank {rank}, must hold {K} numbers.", field="body")
        out.append([_number(x, f"{where}, rank {rank}") for x in numbers])
    return out


def parse_table(body: bytes, *, world: int, first: int, to_step: int) -> list[dict]:
    """The rows of one uploaded stretch (JSON lines), each {step, grad, param} with `world`
    ranks of K finite numbers, one per step, consecutive, ending at `to_step` − 1 and not
    before `first`; anything else is a MarketError (400) that says what is wrong."""
    if len(body) > MAX_BYTES:
        raise MarketError(f"Larger than {MAX_BYTES} bytes.", field="body")
    try:
        lines = body.decode("utf-8").splitlines()
        rows = [json.loads(line, parse_constant=_refuse) for line in lines if line.strip()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise MarketError(f"Not JSON lines: {str(exc)[:200]}", field="body") from None
    if not rows or len(rows) > MAX_STEPS:
        raise MarketError(f"Send 1 to {MAX_STEPS} steps' commitments.", field="body")
    table: list[dict] = []
    steps: list[int] = []
    for i, row in enumerate(rows):
        where = f"line {i + 1}"
        if not isinstance(row, dict) or not {"step", "grad", "param"} <= set(row) <= FIELDS:
            raise MarketError(f"{where} must be an object with step, grad, param (and model) only.",
                              field="body")
        step = row["step"]
        if isinstance(step, bool) or not isinstance(step, int):
            raise MarketError(f"{where}: step must be an integer.", field="body")
        steps.append(step)
        table.append({"step": step, "grad": _ranks(row["grad"], world, f"{where}, grad"),
                      "param": _ranks(row["param"], world, f"{where}, param")})
        if "model" in row:  # at a stretch's first step: the state every rank trained it from
            digests = row["model"]
            if (not isinstance(digests, list) or len(digests) != world
                    or not all(isinstance(d, str) and SHA256.match(d) for d in digests)):
                raise MarketError(f"{where}: model must hold {world} SHA-256 digests (hex).", field="body")
            table[-1]["model"] = digests
    if steps != list(range(to_step - len(steps), to_step)):
        raise MarketError(f"The steps must run one by one up to step {to_step - 1}, the last before "
                          f"checkpoint step {to_step}.", field="body")
    if steps[0] < first:
        raise MarketError(f"Step {steps[0]} is before step {first}, where this placement started.",
                          field="body")
    return table


def _refuse(constant: str):
    raise ValueError(f"{constant} is not a number")


def commitments_receive(assignment: Assignment, *, step: int, body: bytes, sha256: str) -> bool:
    """Keep one node's copy of the commitments of the steps before checkpoint `step`.
    Returns True when stored, False when the same stretch was stored already; a different
    one for the same or an overlapping stretch is a Conflict."""
    job = assignment.job
    parts = list(Assignment.objects.filter(job_id=assignment.job_id, attempt=assignment.attempt)
                 .values_list("gpus", flat=True))
    if len(parts) < 2 or is_diloco(job):
        raise Conflict("Gradient commitments are for DDP attempts across nodes.", code="not_ddp")
    if job.total_steps and step > job.total_steps:
        raise MarketError(f"Step {step} is past the job's last step {job.total_steps}.", field="step")
    first = assignment.resume_step or 0
    if step <= first:
        raise MarketError(f"Step {step} is not after step {first}, where this placement started.",
                          field="step")
    table = parse_table(body, world=sum(parts), first=first, to_step=step)
    from_step = table[0]["step"]
    with transaction.atomic():
        Assignment.objects.select_for_update(of=("self",)).filter(pk=assignment.pk).first()
        held = GradientCommitment.objects.filter(assignment=assignment, to_step__gt=from_step,
                                                 from_step__lt=step)
        same = held.filter(to_step=step).first()
        if same is not None:
            if same.sha256 == sha256:
                return False
            raise Conflict(f"Other commitments up to step {step} were uploaded already.",
                           code="commitments_conflict")
        if held.exists():
            raise Conflict(f"Commitments overlapping steps {from_step}..{step} were uploaded already.",
                           code="commitments_conflict")
        try:
            GradientCommitment.objects.create(assignment=assignment, from_step=from_step, to_step=step,
                                              sha256=sha256, table=table)
        except IntegrityError:
            raise Conflict(f"Commitments up to step {step} were uploaded already.",
                           code="commitments_conflict") from None
    return True


def commitment_tables(job: Job, attempt: int, steps: set[int]) -> dict[int, list[dict]]:
    """Each node's own copy (node rank → rows, by step) of the commitments of `steps`."""
    tables: dict[int, list[dict]] = {}
    for a in Assignment.objects.filter(job=job, attempt=attempt).order_by("node_rank"):
        rows = [row for chunk in a.gradient_commitments.order_by("to_step")
                for row in chunk.table if row["step"] in steps]
        tables[a.node_rank] = sorted(rows, key=lambda row: row["step"])
    return tables
