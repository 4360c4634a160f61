"""One training process (one rank) of a job, started by torch.distributed's elastic launch.

    python -m workers.training.run SPEC.json

SPEC.json (written by the agent): template, params, dataset, workdir, backend, resume_from,
pg_timeout_s. Rank 0 writes progress, checkpoint and result events to workdir/events.jsonl.
Randomness is a function of (seed, rank, step), so a run resumed from a checkpoint, or
replayed by a verifier, follows exactly the same path.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from . import checkpoint, data, nets
from .events import EventWriter

REPORTS_PER_RUN = 400  # progress points per run, at most (plus one per checkpoint)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1)


def param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _batches(sampler: DistributedSampler, batch_size: int) -> list[list[int]]:
    indices = list(sampler)
    return [indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    backend = spec.get("backend", "gloo")
    device = torch.device(f"cuda:{local_rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Survivors of a dead peer fail after this instead of gloo's default 30 minutes.
    dist.init_process_group(backend, timeout=timedelta(seconds=spec.get("pg_timeout_s", 60)))

    workdir = Path(spec["workdir"])
    ckpt_dir = workdir / "checkpoints"
    events = EventWriter(workdir / "events.jsonl" if rank == 0 else None)
    template, params = spec["template"], spec["params"]
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed)
    try:
        splits = data.load(template, spec["dataset"], params)
    except data.DatasetError as exc:
        # The consumer's data, not the node, is at fault: say so, so the job fails fast.
        events.emit("failed", reason="dataset", message=str(exc))
        events.close()
        dist.destroy_process_group()
        return 3
    model, loss_fn = nets.build(template, params, splits)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params["learning_rate"]))

    batch = int(params["batch_size"])
    sampler = DistributedSampler(range(len(splits.x_train)), num_replicas=world, rank=rank,
                                 shuffle=True, seed=seed, drop_last=True)
    steps_per_epoch = max(1, len(sampler) // batch)
    if len(sampler) < batch:
        batch = len(sampler)
    total_steps = int(params["epochs"]) * steps_per_epoch

    # Resume: a local checkpoint from an earlier attempt of this process group wins over
    # the one the platform handed over (it is newer).
    resume = checkpoint.latest(ckpt_dir) or (Path(spec["resume_from"]) if spec.get("resume_from") else None)
    start_step = 0
    if resume is not None:
        state = checkpoint.load(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # Hyper-parameters come from the job spec, never from the provider's checkpoint.
        for group in optimizer.param_groups:
            group["lr"] = float(params["learning_rate"])
        start_step = int(state["step"])
    ddp = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    events.emit("started", step=start_step, total_steps=total_steps, world_size=world,
                resumed_from=str(resume) if resume else None, steps_per_epoch=steps_per_epoch)

    every = int(params.get("checkpoint_every", 50))
    # Reporting all-reduces the loss, so every rank must decide it the same way: by step
    # number, never by its own clock (a mismatch hangs or corrupts the collectives).
    report_every = max(1, total_steps // REPORTS_PER_RUN)
    step, window_start, window_steps = start_step, time.perf_counter(), 0
    x_all, y_all = splits.x_train, splits.y_train
    while step < total_steps:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        for indices in _batches(sampler, batch)[step % steps_per_epoch:steps_per_epoch]:
            torch.manual_seed(_step_seed(seed, rank, step))
            x, y = x_all[indices].to(device), y_all[indices].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimizer.step()
            step += 1
            window_steps += 1
            now = time.perf_counter()
            checkpoint_due = step % every == 0 or step == total_steps
            if step % report_every == 0 or checkpoint_due:
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG if backend == "nccl" else dist.ReduceOp.SUM)
                if backend != "nccl":
                    mean_loss /= world
                elapsed = max(now - window_start, 1e-9)
                events.emit("progress", step=step, total_steps=total_steps, epoch=epoch,
                            loss=float(mean_loss), samples_per_sec=window_steps * batch * world / elapsed)
                window_start, window_steps = now, 0
            if checkpoint_due and rank == 0:
                path, sha = checkpoint.save(ckpt_dir, step=step, model=model, optimizer=optimizer,
                                            meta={"template": template, "epoch": epoch})
                events.emit("checkpoint", step=step, path=str(path), sha256=sha,
                            bytes=path.stat().st_size)
            if step >= total_steps:
                break

    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, param_digest(model))
    if rank == 0:
        metric, value = nets.evaluate(template, model, splits, device)
        artifact = workdir / "model.pt"
        torch.save({"template": template, "params": params, "model": model.state_dict(),
                    "metric": {metric: value}}, artifact)
        events.emit("finished", step=step, total_steps=total_steps, metric=metric, value=value,
                    artifact=str(artifact), sha256=checkpoint.sha256_file(artifact),
                    param_digests=digests)
    events.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
