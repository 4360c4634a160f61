"""How a job's work will be verified, as the quote and the job page say before funding:
step replay, or held-out evaluation only (a consumer's task that is not deterministic under
the runtime's seeding, or DiLoCo across nodes), or "checking" while the verifier finds out
(services/determinism.py asks it)."""

from __future__ import annotations

import hashlib
import json

from ..models import CodeBundle, Dataset, DeterminismCheck, Job

CHECKING = "checking"
REPLAY = "replay"
EVALUATION_ONLY = "evaluation_only"
UNKNOWN = "unknown"

MESSAGES = {
    CHECKING: "Checking whether your task is deterministic under the runtime's seeding…",
    REPLAY: "Verified by step replay: the verifier replays spot-checked steps of the work and "
            "evaluates the final model on the held-out split.",
    EVALUATION_ONLY: "Not deterministic under the runtime's seeding: verified by held-out "
                     "evaluation only (the final model, on the held-out split). Step replay could "
                     "not tell honest work from a cheat's, so none is attempted and the work is "
                     "not disputed for replaying differently.",
    UNKNOWN: "The determinism check could not run yet; the verifier checks it again when the "
             "work is verified, and replays steps only if the task gives the same bits twice.",
}
DILOCO = ("DiLoCo across nodes: verified by held-out evaluation of the final model (each node "
          "trains its own group between outer steps, so steps are not replayed).")


def determinism_key(*, bundle: CodeBundle, dataset: Dataset | None, dataset_ref: str, params: dict,
                    world_size: int) -> str:
    """The content a determinism answer holds for: the task's code, its data, its params
    and how many ranks split each step (the data order depends on it)."""
    data = f"sha256:{dataset.sha256}" if dataset is not None else dataset_ref
    blob = json.dumps([bundle.sha256, data, params, world_size], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def determinism_of_job(job: Job) -> DeterminismCheck | None:
    if job.bundle is None:
        return None
    return DeterminismCheck.objects.filter(key=determinism_key(
        bundle=job.bundle, dataset=job.dataset, dataset_ref=job.dataset_ref, params=job.params,
        world_size=job.nodes * job.gpus_per_node)).first()


def verification_method(*, custom_code: bool, diloco: bool, check: DeterminismCheck | None) -> dict:
    """{method, message, determinism}: what the quote and the job page say."""
    if diloco:
        method, message = EVALUATION_ONLY, DILOCO
    elif not custom_code:
        method, message = REPLAY, MESSAGES[REPLAY]  # the templates seed everything they draw
    elif check is None or check.status in (check.Status.PENDING, check.Status.RUNNING):
        method, message = CHECKING, MESSAGES[CHECKING]
    elif check.status == check.Status.ERROR:
        method, message = UNKNOWN, MESSAGES[UNKNOWN]
    else:
        method = REPLAY if check.deterministic else EVALUATION_ONLY
        message = MESSAGES[method]
    found = None
    if check is not None and check.status == check.Status.DONE:
        found = {"deterministic": check.deterministic, "steps": check.steps, "rel_l2": check.rel_l2,
                 "seconds": check.seconds}
    return {"method": method, "message": message, "determinism": found}


def job_verification_method(job: Job) -> dict:
    diloco = (job.sync or {}).get("mode") == "diloco" and job.nodes > 1
    return verification_method(custom_code=job.bundle_id is not None, diloco=diloco,
                               check=None if diloco else determinism_of_job(job))
